//! Single byte ranges (RFC 9110 §14): what blob downloads resume with.

/// What a `Range` header asks of a body of `size` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ranged {
    /// No usable range: send the whole body (200). Multiple ranges and
    /// other units also land here, as RFC 9110 allows.
    Full,
    /// Send bytes `start..=end` (206).
    Partial { start: u64, end: u64 },
    /// Nothing of the body satisfies it (416).
    Unsatisfiable,
}

pub fn parse(header: Option<&str>, size: u64) -> Ranged {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Ranged::Full;
    };
    if spec.contains(',') {
        return Ranged::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Ranged::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    let num = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (first.is_empty(), num(first), num(last)) {
        // "-N": the last N bytes.
        (true, _, Some(n)) => {
            if n == 0 || size == 0 {
                Ranged::Unsatisfiable
            } else {
                Ranged::Partial {
                    start: size.saturating_sub(n),
                    end: size - 1,
                }
            }
        }
        (false, Some(start), None) if last.is_empty() => {
            if start >= size {
                Ranged::Unsatisfiable
            } else {
                Ranged::Partial {
                    start,
                    end: size - 1,
                }
            }
        }
        (false, Some(start), Some(end)) if start <= end => {
            if start >= size {
                Ranged::Unsatisfiable
            } else {
                Ranged::Partial {
                    start,
                    end: end.min(size - 1),
                }
            }
        }
        _ => Ranged::Full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse(None, 10), Ranged::Full);
        assert_eq!(
            parse(Some("bytes=0-4"), 10),
            Ranged::Partial { start: 0, end: 4 }
        );
        assert_eq!(
            parse(Some("bytes=5-"), 10),
            Ranged::Partial { start: 5, end: 9 }
        );
        assert_eq!(
            parse(Some("bytes=-3"), 10),
            Ranged::Partial { start: 7, end: 9 }
        );
        assert_eq!(
            parse(Some("bytes=-30"), 10),
            Ranged::Partial { start: 0, end: 9 }
        );
        assert_eq!(
            parse(Some("bytes=8-100"), 10),
            Ranged::Partial { start: 8, end: 9 }
        );
        assert_eq!(parse(Some("bytes=10-"), 10), Ranged::Unsatisfiable);
        assert_eq!(parse(Some("bytes=-0"), 10), Ranged::Unsatisfiable);
        assert_eq!(parse(Some("bytes=5-2"), 10), Ranged::Full);
        assert_eq!(parse(Some("bytes=0-1,3-4"), 10), Ranged::Full);
        assert_eq!(parse(Some("items=0-1"), 10), Ranged::Full);
        assert_eq!(parse(Some("bytes=+1-2"), 10), Ranged::Full);
        assert_eq!(
            parse(Some("bytes=99999999999999999999999-"), 10),
            Ranged::Full
        );
    }
}
