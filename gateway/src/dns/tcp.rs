//! DNS over TCP (RFC 7766): two-byte length, then the message; several
//! queries may follow on one connection, each answered in turn.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    time::timeout,
};

use super::{Query, Responder, Transport};

/// How long a connection may sit idle between queries (RFC 7766 suggests
/// seconds, not minutes).
const IDLE: Duration = Duration::from_secs(10);
/// Queries answered on one connection before the gateway closes it.
const MAX_QUERIES: usize = 100;

/// Answers queries on `stream` until the device closes it, goes idle, or
/// sends something that is not a DNS message.
pub async fn serve(
    responder: &Responder,
    mut stream: TcpStream,
    device: SocketAddr,
    dst: SocketAddr,
) {
    let mut buf = Vec::new();
    for _ in 0..MAX_QUERIES {
        let mut len = [0u8; 2];
        match timeout(IDLE, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            // Closed, reset or idle: nothing to answer.
            _ => return,
        }
        let len = usize::from(u16::from_be_bytes(len));
        if len == 0 {
            return;
        }
        buf.resize(len, 0);
        match timeout(IDLE, stream.read_exact(&mut buf)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let query = Query {
            bytes: &buf,
            device,
            dst,
            ifindex: None,
            transport: Transport::Tcp,
        };
        let Some(answer) = responder.handle(query).await else {
            // Not a DNS message: the stream cannot be trusted to be framed.
            return;
        };
        let Ok(n) = u16::try_from(answer.len()) else {
            return;
        };
        let mut out = Vec::with_capacity(answer.len() + 2);
        out.extend_from_slice(&n.to_be_bytes());
        out.extend_from_slice(&answer);
        if timeout(IDLE, stream.write_all(&out)).await.is_err() {
            return;
        }
    }
}
