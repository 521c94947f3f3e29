//! Response bodies: one boxed type for every handler, and a wrapper that
//! counts the bytes sent and writes the request's audit record when the
//! body ends (or the device goes away).

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt as _, Empty, Full, combinators::UnsyncBoxBody};

use crate::audit::{Audit, Fault, Record};

/// The body type of every response the gateway sends.
pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Counts data bytes; logs `record` (with `bytes` set) once, when the body
/// ends, errors, or is dropped unfinished.
pub struct Audited {
    inner: Body,
    sent: u64,
    /// The exact length when known: hyper stops polling a body once it has
    /// sent Content-Length bytes, so reaching it counts as the end.
    expected: Option<u64>,
    record: Option<Record>,
    audit: Audit,
}

impl Audited {
    /// `length` is the response's Content-Length, if it has one.
    pub fn new(inner: Body, record: Record, audit: Audit, length: Option<u64>) -> Self {
        let expected = inner.size_hint().exact().or(length);
        Self {
            inner,
            sent: 0,
            expected,
            record: Some(record),
            audit,
        }
    }

    fn finish(&mut self, problem: Option<String>) {
        if let Some(mut record) = self.record.take() {
            record.bytes = Some(self.sent);
            if let Some(p) = problem {
                record.fault.get_or_insert(Fault::Device);
                record.detail = Some(p);
            }
            let audit = self.audit.clone();
            // Drop can run outside an async context only at shutdown, when
            // the runtime is gone and the record cannot be written anyway.
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move { audit.log(record).await });
            }
        }
    }
}

impl HttpBody for Audited {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.sent += data.len() as u64;
                }
            }
            Poll::Ready(Some(Err(e))) => {
                let msg = format!("body failed after {} bytes: {e}", self.sent);
                // A failing body is the upstream's or ours, not the device's.
                let fault = body_error_fault(e);
                if let Some(r) = self.record.as_mut() {
                    r.fault.get_or_insert(fault);
                }
                self.finish(Some(msg));
            }
            Poll::Ready(None) => self.finish(None),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whose fault a failing response body is. The error says: a fill's
/// (its cause, carried to every follower), a cache error (a full disk is
/// `local`, other disk errors `internal`), an upstream error. Anything
/// else is the gateway's own reading (a cache file on a hit): `internal`.
fn body_error_fault(e: &std::io::Error) -> Fault {
    let inner = e.get_ref();
    if let Some(c) = inner.and_then(|i| i.downcast_ref::<crate::cache::CacheError>()) {
        return c.cause().into();
    }
    if let Some(u) = inner.and_then(|i| i.downcast_ref::<crate::upstream::UpstreamError>()) {
        return u.fault().into();
    }
    Fault::Internal
}

impl Drop for Audited {
    fn drop(&mut self) {
        if self.record.is_some() {
            // HEAD responses and bodies hyper never polled end here too.
            let complete = self.inner.is_end_stream() || self.expected == Some(self.sent);
            let unfinished = !complete;
            let sent = self.sent;
            self.finish(unfinished.then(|| format!("device went away after {sent} bytes")));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::cache::{CacheError, FailCause};

    #[test]
    fn a_body_errors_fault_is_what_its_error_says() {
        let digest: crate::cache::Digest = format!("sha256:{}", "a".repeat(64))
            .parse()
            .expect("digest");
        let fill = |cause| -> std::io::Error {
            CacheError::FillFailed {
                digest,
                reason: Arc::from("x"),
                cause,
            }
            .into()
        };
        assert_eq!(
            body_error_fault(&fill(FailCause::Upstream)),
            Fault::Upstream
        );
        assert_eq!(
            body_error_fault(&fill(FailCause::Status(500))),
            Fault::Upstream
        );
        assert_eq!(body_error_fault(&fill(FailCause::NoSpace)), Fault::Local);
        assert_eq!(
            body_error_fault(&fill(FailCause::Internal)),
            Fault::Internal
        );
        // A disk read on a cache hit: the gateway's own, not upstream's.
        let disk: std::io::Error = CacheError::Io {
            op: "read",
            path: "/cache/blob".into(),
            source: std::io::Error::from_raw_os_error(libc::EIO),
        }
        .into();
        assert_eq!(body_error_fault(&disk), Fault::Internal);
        assert_eq!(
            body_error_fault(&std::io::Error::from_raw_os_error(libc::EIO)),
            Fault::Internal
        );
        let wrong: std::io::Error = CacheError::DigestMismatch {
            expected: digest,
            actual: digest,
        }
        .into();
        assert_eq!(body_error_fault(&wrong), Fault::Upstream);
    }
}
