//! Digest parsing: accepts exactly sha256 in canonical form, classifies the
//! rest, never panics.

use super::super::{CacheError, Digest};

const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

#[test]
fn parses_canonical_sha256() {
    let text = format!("sha256:{HEX}");
    let d = Digest::parse(&text).expect("valid");
    assert_eq!(d.to_string(), text);
    assert_eq!(d.hex(), HEX);
    assert_eq!(d, Digest::of(b""));
    assert_eq!(text.parse::<Digest>().expect("FromStr"), d);
    assert_eq!(Digest::from_hex(HEX), Some(d));
}

#[test]
fn other_algorithms_are_unsupported_not_invalid() {
    for input in [
        "sha512:abcdef0123",
        "blake3:AbC=_-",
        "multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8",
    ] {
        assert!(
            matches!(
                Digest::parse(input),
                Err(CacheError::UnsupportedDigest { .. })
            ),
            "{input}"
        );
    }
}

#[test]
fn rejects_malformed() {
    let upper = format!("sha256:{}", HEX.to_uppercase());
    let short = format!("sha256:{}", &HEX[1..]);
    let long = format!("sha256:{HEX}0");
    let nonhex = format!("sha256:{}g", &HEX[1..]);
    let bad = [
        "",
        ":",
        "sha256",
        "sha256:",
        HEX,
        &upper,
        &short,
        &long,
        &nonhex,
        "SHA256:abc",
        "-sha:abc",
        "sha-:abc",
        "sha--256:abc",
        "sha512:",
        "sha512:a b",
        "sha256:é",
    ];
    for input in bad {
        assert!(
            matches!(Digest::parse(input), Err(CacheError::InvalidDigest { .. })),
            "{input:?} should be invalid"
        );
    }
}

#[test]
fn mutated_inputs_never_panic_and_only_canonical_parses() {
    let valid = format!("sha256:{HEX}");
    let alphabet: Vec<char> = "sha256:0123456789abcdefABCDEF+._-=é\u{0}\u{10FFFF} "
        .chars()
        .collect();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..20_000 {
        let mut s: Vec<char> = valid.chars().collect();
        for _ in 0..=(next() % 4) {
            let at = (next() as usize) % (s.len() + 1);
            let c = alphabet[(next() as usize) % alphabet.len()];
            match next() % 3 {
                0 if at < s.len() => s[at] = c,
                1 if at < s.len() => {
                    s.remove(at);
                }
                _ => s.insert(at, c),
            }
        }
        let input: String = s.into_iter().collect();
        if let Ok(d) = Digest::parse(&input) {
            // Anything accepted is canonical: it prints back as given.
            assert_eq!(d.to_string(), input);
        }
    }
    // Long and odd inputs, including ones whose error echo must not split
    // a multi-byte character.
    let huge = "é".repeat(100_000);
    assert!(Digest::parse(&huge).is_err());
    assert!(Digest::parse(&format!("sha256:{huge}")).is_err());
    assert!(Digest::parse(&":".repeat(1000)).is_err());
}
