//! Verification of stored files as they are read back: a whole body
//! served from the cache is hashed as it streams, and its last chunk is
//! held back until the hash matched the blob's digest. A blob damaged on
//! disk since it was stored (rot, a hand edit) thus never reaches a device
//! as a complete-looking body: the response ends short with an error, the
//! caller forgets the entry (the next request refills it, which replaces
//! the file) and the log says to run `gateway cache verify`. A range
//! cannot be checked this way and is served as read.
//!
//! The hash runs on the serving task, chunk by chunk (at most 256 KiB):
//! a cost per byte served, paid for the guarantee the site promises.

use std::pin::Pin;

use bytes::Bytes;
use futures::{Stream, StreamExt as _, stream};
use sha2::{Digest as _, Sha256};

use crate::cache::Digest;

type Chunks = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

struct State {
    inner: Chunks,
    hasher: Sha256,
    held: Option<Bytes>,
    on_mismatch: Option<Box<dyn FnOnce(Digest) + Send>>,
    digest: Digest,
    done: bool,
}

/// `body` (a whole blob's bytes) checked against `digest`;
/// `on_mismatch` gets the digest the bytes had.
pub fn verified(
    body: impl Stream<Item = std::io::Result<Bytes>> + Send + 'static,
    digest: Digest,
    on_mismatch: impl FnOnce(Digest) + Send + 'static,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    let state = State {
        inner: Box::pin(body),
        hasher: Sha256::new(),
        held: None,
        on_mismatch: Some(Box::new(on_mismatch)),
        digest,
        done: false,
    };
    stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        loop {
            match s.inner.next().await {
                Some(Ok(chunk)) => {
                    s.hasher.update(&chunk);
                    if let Some(previous) = s.held.replace(chunk) {
                        return Some((Ok(previous), s));
                    }
                }
                Some(Err(e)) => {
                    s.done = true;
                    return Some((Err(e), s));
                }
                None => {
                    s.done = true;
                    let actual = Digest::from_hasher(std::mem::take(&mut s.hasher));
                    if actual == s.digest {
                        return s.held.take().map(|last| (Ok(last), s));
                    }
                    if let Some(f) = s.on_mismatch.take() {
                        f(actual);
                    }
                    let e = std::io::Error::other(format!(
                        "the cached copy of {} no longer matches its digest (it reads as {actual})",
                        s.digest
                    ));
                    return Some((Err(e), s));
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    async fn run(chunks: &[&'static [u8]], digest: Digest) -> (Vec<u8>, bool, Option<Digest>) {
        let seen = Arc::new(Mutex::new(None));
        let body = stream::iter(
            chunks
                .iter()
                .map(|c| Ok(Bytes::from_static(c)))
                .collect::<Vec<_>>(),
        );
        let mut s = Box::pin(verified(body, digest, {
            let seen = seen.clone();
            move |d| *seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(d)
        }));
        let mut out = Vec::new();
        let mut clean = true;
        while let Some(item) = s.next().await {
            match item {
                Ok(b) => out.extend_from_slice(&b),
                Err(_) => clean = false,
            }
        }
        let seen = *seen.lock().unwrap_or_else(|e| e.into_inner());
        (out, clean, seen)
    }

    #[tokio::test]
    async fn a_matching_body_is_passed_whole() {
        let (out, clean, seen) = run(&[b"hello ", b"world"], Digest::of(b"hello world")).await;
        assert_eq!(
            (out.as_slice(), clean, seen),
            (&b"hello world"[..], true, None)
        );
    }

    #[tokio::test]
    async fn a_damaged_body_ends_short_with_an_error() {
        let (out, clean, seen) = run(&[b"hello ", b"w0rld"], Digest::of(b"hello world")).await;
        assert_eq!(out, b"hello ", "the last chunk was held back");
        assert!(!clean);
        assert_eq!(seen, Some(Digest::of(b"hello w0rld")));
    }
}
