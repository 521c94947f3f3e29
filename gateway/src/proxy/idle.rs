//! A deadline on progress for a device connection: until its first byte
//! arrives, then between any two moves of bytes, either way. It bounds
//! every phase hyper leaves open: the wait for the HTTP/2 preface or the
//! first request line after the handshake (version detection has no
//! timeout of its own), an idle HTTP/2 connection, a device that stops
//! reading a body or stops sending one. Time spent waiting on upstream is
//! bounded by the upstream's own timeouts, which are shorter.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Sleep, sleep},
};

pub struct IdleIo<IO> {
    inner: IO,
    deadline: Pin<Box<Sleep>>,
    idle: Duration,
    started: bool,
}

impl<IO> IdleIo<IO> {
    /// `first`: the time allowed for the first byte; `idle`: between moves
    /// after that.
    pub fn new(inner: IO, first: Duration, idle: Duration) -> Self {
        Self {
            inner,
            deadline: Box::pin(sleep(first)),
            idle,
            started: false,
        }
    }

    fn progressed(&mut self) {
        self.started = true;
        self.deadline.as_mut().reset(Instant::now() + self.idle);
    }

    /// Pending inner I/O: an error once the deadline has passed (and the
    /// timer armed to wake this task when it does).
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Some(io::Error::new(
                io::ErrorKind::TimedOut,
                if self.started {
                    "no bytes moved either way within the idle timeout"
                } else {
                    "nothing received within the first-bytes timeout"
                },
            )),
            Poll::Pending => None,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for IdleIo<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.progressed();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.expired(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for IdleIo<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                if n > 0 && this.started {
                    this.progressed();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.expired(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(Ok(n)) => {
                if n > 0 && this.started {
                    this.progressed();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.expired(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, duplex};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn silence_before_the_first_byte_ends_the_connection() {
        let (_peer, ours) = duplex(64);
        let mut io = IdleIo::new(ours, Duration::from_secs(10), Duration::from_secs(120));
        let mut buf = [0u8; 8];
        let err = io.read(&mut buf).await.expect_err("times out");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_either_way_keep_it_alive_and_silence_ends_it() {
        let (mut peer, ours) = duplex(64);
        let mut io = IdleIo::new(ours, Duration::from_secs(10), Duration::from_secs(120));
        peer.write_all(b"GET").await.expect("write");
        let mut buf = [0u8; 3];
        io.read_exact(&mut buf).await.expect("first bytes");
        // 100 s later (within the idle time) a write is progress too.
        tokio::time::sleep(Duration::from_secs(100)).await;
        io.write_all(b"ok").await.expect("write");
        tokio::time::sleep(Duration::from_secs(100)).await;
        peer.write_all(b"x").await.expect("write");
        let mut one = [0u8; 1];
        io.read_exact(&mut one).await.expect("still alive");
        // Then nothing for longer than the idle time.
        let err = io.read(&mut one).await.expect_err("idle");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
