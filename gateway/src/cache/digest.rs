//! Content digests: `sha256:<64 lowercase hex>`, the only key of the store.
//!
//! Parsing follows the OCI image-spec digest grammar
//! (`algorithm ":" encoded`, algorithm components `[a-z0-9]+` joined by
//! `[+._-]`, encoded `[a-zA-Z0-9=_-]+`). A well-formed digest of another
//! algorithm is [`CacheError::UnsupportedDigest`], so callers can proxy it
//! uncached; anything else is [`CacheError::InvalidDigest`]. Parsing looks
//! at bytes only and never panics, whatever the input.

use std::{fmt, str::FromStr};

use sha2::{Digest as _, Sha256};

use super::CacheError;

const PREFIX: &str = "sha256:";
/// How much of a bad input an error repeats: enough to recognise it, not
/// enough to flood a log with an attacker's megabyte.
const ECHO_CHARS: usize = 100;

/// A sha256 content digest. Cheap to copy; displays as `sha256:<hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    /// Parses `sha256:<64 lowercase hex>`.
    pub fn parse(input: &str) -> Result<Self, CacheError> {
        let invalid = |reason| CacheError::InvalidDigest {
            input: input.chars().take(ECHO_CHARS).collect(),
            reason,
        };
        let Some((algorithm, encoded)) = input.split_once(':') else {
            return Err(invalid("expected <algorithm>:<hex>"));
        };
        if !valid_algorithm(algorithm) {
            return Err(invalid("malformed algorithm"));
        }
        if algorithm != "sha256" {
            let encoded_ok = !encoded.is_empty()
                && encoded
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'=' | b'_' | b'-'));
            return Err(if encoded_ok {
                CacheError::UnsupportedDigest {
                    algorithm: algorithm.to_owned(),
                }
            } else {
                invalid("malformed encoded part")
            });
        }
        Self::from_hex(encoded).ok_or_else(|| invalid("sha256 needs 64 lowercase hex digits"))
    }

    /// Parses the bare 64-hex form used as the blob file name.
    pub fn from_hex(hex_digits: &str) -> Option<Self> {
        // Uppercase is refused: the OCI spec says lowercase, and two spellings
        // of one digest would be two cache keys.
        if hex_digits.len() != 64
            || !hex_digits
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return None;
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_digits, &mut bytes).ok()?;
        Some(Self(bytes))
    }

    /// The digest of a finished hash.
    pub fn from_hasher(hasher: Sha256) -> Self {
        Self(hasher.finalize().into())
    }

    /// The digest of `data` (small inputs; blobs are hashed while streaming).
    pub fn of(data: &[u8]) -> Self {
        Self(Sha256::digest(data).into())
    }

    /// The 64 lowercase hex digits, without the algorithm.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

fn valid_algorithm(algorithm: &str) -> bool {
    let mut previous_was_separator = true; // no leading separator
    for b in algorithm.bytes() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' => previous_was_separator = false,
            b'+' | b'.' | b'_' | b'-' if !previous_was_separator => previous_was_separator = true,
            _ => return false,
        }
    }
    // Also refuses the empty algorithm and a trailing separator.
    !previous_was_separator
}

impl FromStr for Digest {
    type Err = CacheError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
