//! Reading an upstream body with a bound on stalls: a peer that sends
//! headers and then nothing (or only empty frames) fails the stream after
//! `idle` instead of holding a fill open for ever.

use std::{
    future::Future as _,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use futures::Stream;
use http::Response;
use http_body::Body as _;
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::{ResponseMeta, UpstreamError, Waiting};

/// The default longest wait for the next body bytes.
pub const DEFAULT_BODY_IDLE: Duration = Duration::from_secs(30);

/// The body's data chunks as a [`Stream`] (also `Unpin` and `Send`),
/// failing with [`UpstreamError::Timeout`] when no bytes arrive for
/// `idle` and with [`UpstreamError::Body`] when the connection breaks;
/// it ends after the first error. Trailers and empty frames are skipped
/// and are no progress. A connection closed before the body's end (one
/// byte short of its `Content-Length`, or a chunked body without its last
/// chunk) is reported by hyper as [`UpstreamError::Body`]; wrong bytes
/// are not detectable here: the caller checks the digest.
pub fn body_stream(resp: Response<Incoming>, idle: Duration) -> BodyStream {
    let url = resp
        .extensions()
        .get::<ResponseMeta>()
        .map_or_else(|| String::from("upstream"), |m| m.url.clone());
    BodyStream {
        body: Some(resp.into_body()),
        url,
        idle,
        timer: Box::pin(tokio::time::sleep(idle)),
        waiting: false,
    }
}

/// See [`body_stream`].
pub struct BodyStream {
    /// `None` once the body ended or failed.
    body: Option<Incoming>,
    /// Redacted, for errors.
    url: String,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
    /// The timer runs only while the consumer waits for the next chunk,
    /// so time the consumer spends elsewhere (back-pressure) is not
    /// counted against upstream.
    waiting: bool,
}

impl Stream for BodyStream {
    type Item = Result<Bytes, UpstreamError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let Some(body) = this.body.as_mut() else {
            return Poll::Ready(None);
        };
        if !this.waiting {
            this.waiting = true;
            this.timer.as_mut().reset(Instant::now() + this.idle);
        }
        loop {
            match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if !data.is_empty() => {
                        this.waiting = false;
                        return Poll::Ready(Some(Ok(data)));
                    }
                    _ => continue,
                },
                Poll::Ready(Some(Err(source))) => {
                    this.body = None;
                    let url = std::mem::take(&mut this.url);
                    return Poll::Ready(Some(Err(UpstreamError::Body { url, source })));
                }
                Poll::Ready(None) => {
                    this.body = None;
                    return Poll::Ready(None);
                }
                Poll::Pending => break,
            }
        }
        ready!(this.timer.as_mut().poll(cx));
        this.body = None;
        Poll::Ready(Some(Err(UpstreamError::Timeout {
            url: std::mem::take(&mut this.url),
            waiting: Waiting::Body,
            after: this.idle,
        })))
    }
}

impl std::fmt::Debug for BodyStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyStream")
            .field("url", &self.url)
            .field("idle", &self.idle)
            .field("done", &self.body.is_none())
            .finish()
    }
}
