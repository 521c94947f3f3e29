//! Reading an upstream body with a bound on stalls and on crawls: a peer
//! that sends headers and then nothing (or only empty frames) fails the
//! stream after `idle`, and one that trickles fails once a window of
//! waiting brings less than the progress floor (`rate.rs`), instead of
//! holding a fill open for ever.

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

use super::{
    ResponseMeta, UpstreamError, Waiting,
    rate::{BodyRate, Meter, TooSlow},
};

/// The default longest wait for the next body bytes.
pub const DEFAULT_BODY_IDLE: Duration = Duration::from_secs(30);

/// The body's data chunks as a [`Stream`] (also `Unpin` and `Send`),
/// failing with [`UpstreamError::Timeout`] when no bytes arrive for
/// `idle` and with [`UpstreamError::Body`] when the connection breaks;
/// it ends after the first error. Trailers and empty frames are skipped
/// and are no progress. A connection closed before the body's end (one
/// byte short of its `Content-Length`, or a chunked body without its last
/// chunk) is reported by hyper as [`UpstreamError::Body`]; wrong bytes
/// are not detectable here: the caller checks the digest. No progress
/// floor: see [`BodyStream::with_min_rate`].
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
        wait_start: None,
        clock: Duration::ZERO,
        meter: None,
    }
}

/// See [`body_stream`].
pub struct BodyStream {
    /// `None` once the body ended or failed.
    body: Option<Incoming>,
    /// Redacted, for errors.
    url: String,
    idle: Duration,
    /// The next deadline of the current wait: the idle timeout or the
    /// next progress check, whichever is first.
    timer: Pin<Box<Sleep>>,
    /// When the current wait began; `None` while the consumer is busy
    /// elsewhere. Timers run only while the consumer waits for the next
    /// chunk, so time it spends elsewhere (back-pressure) is not counted
    /// against upstream.
    wait_start: Option<Instant>,
    /// Upstream time: the waits before the current one, summed.
    clock: Duration,
    /// The progress floor, if any.
    meter: Option<Meter>,
}

impl BodyStream {
    /// Also fails with [`UpstreamError::TooSlow`] when, after the first
    /// `rate.window` of waiting, a window of waiting brought fewer than
    /// `rate.floor` bytes per second (`rate.rs`). A zero floor changes
    /// nothing.
    pub fn with_min_rate(mut self, rate: BodyRate) -> Self {
        self.meter = Meter::new(rate);
        self
    }

    /// When the current wait (begun at `started`) must be looked at again.
    fn deadline(&self, started: Instant) -> Instant {
        let check = self
            .meter
            .as_ref()
            .map_or(self.idle, |m| m.next_check().saturating_sub(self.clock));
        started + self.idle.min(check)
    }

    fn fail(
        &mut self,
        make: impl FnOnce(String) -> UpstreamError,
    ) -> Poll<Option<<Self as Stream>::Item>> {
        self.body = None;
        self.wait_start = None;
        Poll::Ready(Some(Err(make(std::mem::take(&mut self.url)))))
    }
}

fn too_slow(slow: TooSlow) -> impl FnOnce(String) -> UpstreamError {
    move |url| UpstreamError::TooSlow {
        url,
        bytes: slow.bytes,
        window: slow.window,
        floor: slow.floor,
    }
}

impl Stream for BodyStream {
    type Item = Result<Bytes, UpstreamError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.body.is_none() {
            return Poll::Ready(None);
        }
        let started = match this.wait_start {
            Some(started) => started,
            None => {
                let now = Instant::now();
                this.wait_start = Some(now);
                let deadline = this.deadline(now);
                this.timer.as_mut().reset(deadline);
                now
            }
        };
        while let Some(body) = this.body.as_mut() {
            match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if !data.is_empty() => {
                        this.wait_start = None;
                        this.clock += started.elapsed();
                        if let Some(meter) = this.meter.as_mut() {
                            if let Err(slow) = meter.advance(this.clock) {
                                return this.fail(too_slow(slow));
                            }
                            meter.record(data.len());
                        }
                        crate::metrics::global()
                            .upstream_bytes
                            .inc_by(data.len() as u64);
                        return Poll::Ready(Some(Ok(data)));
                    }
                    _ => continue,
                },
                Poll::Ready(Some(Err(source))) => {
                    return this.fail(|url| UpstreamError::Body { url, source });
                }
                Poll::Ready(None) => {
                    this.body = None;
                    return Poll::Ready(None);
                }
                Poll::Pending => break,
            }
        }
        loop {
            ready!(this.timer.as_mut().poll(cx));
            let waited = started.elapsed();
            if waited >= this.idle {
                let after = this.idle;
                return this.fail(|url| UpstreamError::Timeout {
                    url,
                    waiting: Waiting::Body,
                    after,
                });
            }
            if let Some(meter) = this.meter.as_mut()
                && let Err(slow) = meter.advance(this.clock + waited)
            {
                return this.fail(too_slow(slow));
            }
            // A progress check passed: wait on to the next deadline (the
            // timer's poll registers the waker).
            let deadline = this.deadline(started);
            this.timer.as_mut().reset(deadline);
        }
    }
}

impl std::fmt::Debug for BodyStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyStream")
            .field("url", &self.url)
            .field("idle", &self.idle)
            .field("min_rate", &self.meter)
            .field("done", &self.body.is_none())
            .finish()
    }
}
