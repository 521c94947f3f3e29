//! Passthrough: a device connection spliced byte for byte to the manager.
//!
//! The Margo device API is mutual TLS that must not be inspected; the
//! gateway neither reads nor changes a byte, it only counts them.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
    time::timeout,
};

use crate::audit::{Event, Record};

/// Splices `device` to `upstream` and returns the audit record of the
/// finished flow.
pub async fn splice(
    mut device: TcpStream,
    device_addr: SocketAddr,
    original_dst: SocketAddr,
    upstream: SocketAddr,
    connect_timeout: Duration,
) -> Record {
    let started = Instant::now();
    let record = Record::new(Event::FlowPassthrough)
        .tcp(device_addr, original_dst)
        .reason("manager");
    let mut manager = match timeout(connect_timeout, TcpStream::connect(upstream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return failed(
                record,
                started,
                "upstream",
                format!("connect {upstream}: {e}"),
            );
        }
        Err(_) => {
            return failed(
                record,
                started,
                "upstream",
                format!("connect {upstream}: no answer in {connect_timeout:?}"),
            );
        }
    };
    let _ = device.set_nodelay(true);
    let _ = manager.set_nodelay(true);
    let (mut up, mut down) = (0u64, 0u64);
    let result = {
        let (dev_r, dev_w) = device.split();
        let (mgr_r, mgr_w) = manager.split();
        // The first error ends both directions: a half that can no longer
        // be delivered must not keep the other open.
        tokio::try_join!(pump(dev_r, mgr_w, &mut up), pump(mgr_r, dev_w, &mut down)).err()
    };
    let mut record = record;
    record.bytes_up = Some(up);
    record.bytes_down = Some(down);
    record.duration_ms = Some(elapsed_ms(started));
    if let Some(e) = result {
        record.fault = Some("device");
        record.detail = Some(format!("splice ended: {e}"));
    }
    record
}

/// Splice buffer per direction.
const BUF: usize = 64 * 1024;

/// Copies until end of stream, then half-closes the writer. `count` holds
/// the bytes delivered even when it fails.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    count: &mut u64,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; BUF];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        to.write_all(&buf[..n]).await?;
        *count += n as u64;
    }
}

fn failed(mut record: Record, started: Instant, fault: &'static str, detail: String) -> Record {
    record.bytes_up = Some(0);
    record.bytes_down = Some(0);
    record.duration_ms = Some(elapsed_ms(started));
    record.fault = Some(fault);
    record.detail = Some(detail);
    record
}

fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}
