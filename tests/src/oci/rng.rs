//! Seeded random bytes: the ChaCha20 key stream (ring's, built optimised
//! even in debug builds) under a key derived from the seed, so a layer
//! generated from a seed is the same on every run and machine.
//!
//! Not a hand-written generator: this crate is built at `-O0` for the
//! tests, where a scalar generator made about half a second per MiB under
//! TCG, and layers of several MiB are generated in many tests.

use std::io::{self, Read};

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};

/// A seeded byte stream: each [`Rng::fill`] call is the start of the key
/// stream under a nonce of its own (the call's number), so the bytes
/// depend only on the seed and the sequence of calls.
pub struct Rng {
    key: LessSafeKey,
    calls: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, &seed.to_le_bytes());
        // A SHA-256 digest is exactly ChaCha20's 32-byte key length, which
        // is all `UnboundKey::new` checks.
        let key = UnboundKey::new(&CHACHA20_POLY1305, digest.as_ref()).expect("a 32-byte key");
        Self {
            key: LessSafeKey::new(key),
            calls: 0,
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill(&mut b);
        u64::from_le_bytes(b)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut nonce = [0u8; 12];
        nonce[..8].copy_from_slice(&self.calls.to_le_bytes());
        self.calls += 1;
        buf.fill(0);
        // Sealing zeros leaves the key stream; the tag is not wanted.
        // It fails only for inputs of hundreds of GiB.
        let _tag = self
            .key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), buf)
            .expect("ChaCha20 over a test buffer");
    }
}

/// `len` bytes from the seeded generator.
pub fn seeded_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    Rng::new(seed).fill(&mut buf);
    buf
}

/// A reader of `remaining` seeded random bytes (a layer's file content).
pub(super) struct SeededReader {
    pub(super) rng: Rng,
    pub(super) remaining: u64,
}

impl Read for SeededReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        self.rng.fill(&mut buf[..n]);
        self.remaining -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_deterministic() {
        assert_eq!(seeded_bytes(7, 100), seeded_bytes(7, 100));
        assert_ne!(seeded_bytes(7, 100), seeded_bytes(8, 100));
        assert_eq!(seeded_bytes(7, 13), seeded_bytes(7, 100)[..13]);
        // Not all zeros, and successive calls differ.
        let mut rng = Rng::new(7);
        let (a, b) = (rng.next_u64(), rng.next_u64());
        assert!(a != 0 && a != b);
    }
}
