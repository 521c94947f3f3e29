//! A tolerant `WWW-Authenticate` parser (RFC 9110 section 11.6.1).
//!
//! Several challenges may share one header or be spread over several;
//! commas separate both challenges and parameters, so a comma followed by
//! `token =` continues the parameters and anything else starts a new
//! challenge. Quoted strings may hold commas and backslash escapes.
//! Schemes and parameter names are case-insensitive and returned in lower
//! case. Garbage is skipped up to the next comma; the parser never panics
//! and always terminates (every loop consumes input).

use http::{HeaderMap, header::WWW_AUTHENTICATE};

/// One challenge: `Bearer realm="…",service="…"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Lower case: `bearer`, `basic`.
    pub scheme: String,
    /// Names in lower case, in order; duplicates are kept (the first wins
    /// in [`Challenge::param`]).
    pub params: Vec<(String, String)>,
    /// The `token68` form (`Negotiate abc==`), rare and unused here.
    pub token68: Option<String>,
}

impl Challenge {
    /// The first parameter with this (case-insensitive) name.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// All challenges of all `WWW-Authenticate` headers, in order.
pub fn from_headers(headers: &HeaderMap) -> Vec<Challenge> {
    headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .flat_map(|v| parse(v.as_bytes()))
        .collect()
}

/// The challenges in one header value.
pub fn parse(value: &[u8]) -> Vec<Challenge> {
    let mut c = Cursor { b: value, i: 0 };
    let mut out = Vec::new();
    loop {
        c.skip_while(|b| matches!(b, b' ' | b'\t' | b','));
        if c.at_end() {
            return out;
        }
        let Some(scheme) = c.token() else {
            c.skip_garbage();
            continue;
        };
        let mut challenge = Challenge {
            scheme: lower(scheme),
            params: Vec::new(),
            token68: None,
        };
        let spaced = c.skip_ows();
        match c.peek() {
            None | Some(b',') => {}
            Some(_) if spaced => c.params(&mut challenge),
            // `Bearer"x"`: not a challenge.
            Some(_) => {
                c.skip_garbage();
                continue;
            }
        }
        out.push(challenge);
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn at_end(&self) -> bool {
        self.i >= self.b.len()
    }

    fn skip_while(&mut self, f: impl Fn(u8) -> bool) -> usize {
        let start = self.i;
        while self.peek().is_some_and(&f) {
            self.i += 1;
        }
        self.i - start
    }

    fn skip_ows(&mut self) -> bool {
        self.skip_while(|b| matches!(b, b' ' | b'\t')) > 0
    }

    /// Consumes at least one byte, then up to (not including) the next
    /// comma outside a quoted string.
    fn skip_garbage(&mut self) {
        if self.peek() == Some(b'"') {
            self.quoted();
        } else {
            self.i += 1;
        }
        while let Some(b) = self.peek() {
            match b {
                b',' => return,
                b'"' => {
                    self.quoted();
                }
                _ => self.i += 1,
            }
        }
    }

    fn token(&mut self) -> Option<&[u8]> {
        let start = self.i;
        self.skip_while(is_tchar);
        (self.i > start).then(|| &self.b[start..self.i])
    }

    /// A quoted string starting at the opening quote; an unterminated one
    /// runs to the end of the value.
    fn quoted(&mut self) -> String {
        self.i += 1;
        let mut out = Vec::new();
        while let Some(b) = self.peek() {
            self.i += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    if let Some(escaped) = self.peek() {
                        out.push(escaped);
                        self.i += 1;
                    }
                }
                _ => out.push(b),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// `token68` if the whole item is one, else `name=value` pairs up to
    /// the start of the next challenge.
    fn params(&mut self, challenge: &mut Challenge) {
        let start = self.i;
        self.skip_while(is_token68);
        let run = self.i;
        self.skip_while(|b| b == b'=');
        let end = self.i;
        self.skip_ows();
        if run > start && matches!(self.peek(), None | Some(b',')) {
            challenge.token68 = Some(String::from_utf8_lossy(&self.b[start..end]).into_owned());
            return;
        }
        self.i = start;
        loop {
            self.skip_ows();
            let item = self.i;
            let Some(name) = self.token().map(lower) else {
                break;
            };
            self.skip_ows();
            if self.peek() != Some(b'=') {
                // The scheme of the next challenge, or garbage for the
                // outer loop to skip.
                self.i = item;
                break;
            }
            self.i += 1;
            self.skip_ows();
            let value = if self.peek() == Some(b'"') {
                self.quoted()
            } else {
                self.token().map(text).unwrap_or_default()
            };
            challenge.params.push((name, value));
            self.skip_ows();
            if !self.at_end() && self.peek() != Some(b',') {
                self.skip_garbage();
            }
            if self.at_end() || !self.next_is_param() {
                break;
            }
        }
    }

    /// At a comma: whether the next item is `token =` (another parameter
    /// of this challenge). Consumes the separators only when it is.
    fn next_is_param(&mut self) -> bool {
        let save = self.i;
        self.skip_while(|b| matches!(b, b' ' | b'\t' | b','));
        let after_commas = self.i;
        let is_param = self.token().is_some() && {
            self.skip_ows();
            self.peek() == Some(b'=')
        };
        self.i = if is_param { after_commas } else { save };
        is_param
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token68(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~+/".contains(&b)
}

fn lower(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_ascii_lowercase()
}

/// Unquoted values keep their case.
fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[cfg(test)]
#[expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]
mod tests {
    use super::*;

    fn one(v: &str) -> Challenge {
        let all = parse(v.as_bytes());
        assert_eq!(all.len(), 1, "{all:?}");
        all.into_iter().next().unwrap()
    }

    #[test]
    fn docker_hub_bearer() {
        let c = one(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#,
        );
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c.param("service"), Some("registry.docker.io"));
        assert_eq!(c.param("scope"), Some("repository:library/nginx:pull"));
    }

    #[test]
    fn case_spaces_and_unquoted_values() {
        let c = one("BEARER  Realm = \"https://a/t\" , SERVICE=reg.example ,scope=x");
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.param("realm"), Some("https://a/t"));
        assert_eq!(c.param("service"), Some("reg.example"));
        assert_eq!(c.param("scope"), Some("x"));
    }

    #[test]
    fn commas_and_escapes_inside_quotes() {
        let c = one(
            r#"Bearer realm="https://a/t?x=1,2",scope="repository:a/b:pull,push",error="say \"no\"\\""#,
        );
        assert_eq!(c.param("realm"), Some("https://a/t?x=1,2"));
        assert_eq!(c.param("scope"), Some("repository:a/b:pull,push"));
        assert_eq!(c.param("error"), Some(r#"say "no"\"#));
    }

    #[test]
    fn several_challenges_in_one_value() {
        let all = parse(
            br#"Basic realm="reg", Bearer realm="https://a/t",service="s", Negotiate abc==, Digest realm="d", nonce="n""#,
        );
        let schemes: Vec<_> = all.iter().map(|c| c.scheme.as_str()).collect();
        assert_eq!(schemes, ["basic", "bearer", "negotiate", "digest"]);
        assert_eq!(all[0].param("realm"), Some("reg"));
        assert_eq!(all[1].param("service"), Some("s"));
        assert_eq!(all[2].token68.as_deref(), Some("abc=="));
        assert_eq!(all[3].param("nonce"), Some("n"));
    }

    #[test]
    fn several_headers() {
        let mut h = HeaderMap::new();
        h.append(WWW_AUTHENTICATE, "Basic realm=\"x\"".parse().unwrap());
        h.append(WWW_AUTHENTICATE, "Bearer realm=\"y\"".parse().unwrap());
        let all = from_headers(&h);
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].param("REALM"), Some("y"));
    }

    #[test]
    fn bare_scheme_and_empty_values() {
        let all = parse(b"Bearer, Basic");
        assert_eq!(all.len(), 2);
        assert!(all[0].params.is_empty());
        let c = one("Bearer realm=\"\",service=");
        assert_eq!(c.param("realm"), Some(""));
        assert_eq!(c.param("service"), Some(""));
    }

    #[test]
    fn unterminated_quote_runs_to_the_end() {
        let c = one("Bearer realm=\"https://a/t, service=\"");
        assert_eq!(c.param("realm"), Some("https://a/t, service="));
    }

    #[test]
    fn garbage_never_panics() {
        let cases: &[&[u8]] = &[
            b"",
            b",,,",
            b"\"",
            b"=",
            b"Bearer =",
            b"Bearer ===,",
            b"Bearer realm",
            b"Bearer realm=",
            b"Bearer realm=\"\\",
            b"Bearer\"x\", Basic realm=y",
            b"\xff\xfe Bearer realm=\"\xff\"",
            b"@@@ , Bearer realm=\"r\"",
            b"Bearer realm=\"a\" junk junk, service=\"s\"",
            b"  \t ",
        ];
        for case in cases {
            let _ = parse(case);
        }
        let all = parse(b"@@@ , Bearer realm=\"r\"");
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].param("realm"), Some("r"));
        let all = parse(b"Bearer\"x\", Basic realm=y");
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].scheme, "basic");
        let c = one("Bearer realm=\"a\" junk junk, service=\"s\"");
        assert_eq!(c.param("service"), Some("s"));
    }

    #[test]
    fn every_prefix_of_a_real_header_parses() {
        let full = br#"Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull", Basic realm="x\"y""#;
        for end in 0..=full.len() {
            let _ = parse(&full[..end]);
        }
    }
}
