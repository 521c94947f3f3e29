//! OCI distribution paths, parsed and validated (distribution-spec v1.1).
//!
//! Only what a pulling agent asks is routed; uploads are refused (devices
//! pull through the gateway, they never push through it).

/// A digest reference: `sha256:` and 64 lowercase hex digits.
pub fn is_sha256_digest(s: &str) -> bool {
    s.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reference {
    Tag(String),
    Digest(String),
}

impl Reference {
    pub fn as_str(&self) -> &str {
        match self {
            Self::Tag(t) | Self::Digest(t) => t,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /v2/`: the API version check.
    Base,
    Manifest {
        name: String,
        reference: Reference,
    },
    Blob {
        name: String,
        digest: String,
    },
    Tags {
        name: String,
    },
    Referrers {
        name: String,
        digest: String,
    },
    /// Blob uploads and other writes.
    Upload {
        name: String,
    },
    /// A path under /v2/ that names nothing valid; the message says why.
    Invalid(&'static str),
    /// Not a distribution path at all.
    NotFound,
}

impl Route {
    /// The repository a route names, if any.
    pub fn repository(&self) -> Option<&str> {
        match self {
            Self::Manifest { name, .. }
            | Self::Blob { name, .. }
            | Self::Tags { name }
            | Self::Referrers { name, .. }
            | Self::Upload { name } => Some(name),
            Self::Base | Self::Invalid(_) | Self::NotFound => None,
        }
    }
}

/// Routes a request path (without the query).
pub fn route(path: &str) -> Route {
    if path == "/v2/" || path == "/v2" {
        return Route::Base;
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return Route::NotFound;
    };
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return named(name, |name| Route::Tags { name });
    }
    if let Some((name, _)) = rest.split_once("/blobs/uploads") {
        return named(name, |name| Route::Upload { name });
    }
    for (sep, kind) in [("/manifests/", 0), ("/blobs/", 1), ("/referrers/", 2)] {
        if let Some((name, last)) = rest.rsplit_once(sep) {
            if !is_name(name) {
                return Route::Invalid("NAME_INVALID");
            }
            let name = name.to_owned();
            return match kind {
                0 if is_sha256_digest(last) => Route::Manifest {
                    name,
                    reference: Reference::Digest(last.to_owned()),
                },
                0 if is_tag(last) => Route::Manifest {
                    name,
                    reference: Reference::Tag(last.to_owned()),
                },
                0 => Route::Invalid("MANIFEST_INVALID"),
                1 if is_sha256_digest(last) => Route::Blob {
                    name,
                    digest: last.to_owned(),
                },
                2 if is_sha256_digest(last) => Route::Referrers {
                    name,
                    digest: last.to_owned(),
                },
                _ => Route::Invalid("DIGEST_INVALID"),
            };
        }
    }
    Route::NotFound
}

fn named(name: &str, f: impl FnOnce(String) -> Route) -> Route {
    if is_name(name) {
        f(name.to_owned())
    } else {
        Route::Invalid("NAME_INVALID")
    }
}

/// A repository name: path components of lowercase alphanumerics joined by
/// `.`, `_`, `__` or runs of `-`, 255 bytes at most.
pub fn is_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && name.split('/').all(is_component)
}

fn is_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator: ".", "_", "__" or one or more "-".
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || i >= b.len() || !alnum(b[i]) {
            return false;
        }
    }
    true
}

/// A tag: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
pub fn is_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b[1..]
            .iter()
            .all(|x| x.is_ascii_alphanumeric() || matches!(x, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn routes() {
        assert_eq!(route("/v2/"), Route::Base);
        assert_eq!(
            route("/v2/library/nginx/manifests/1.27"),
            Route::Manifest {
                name: "library/nginx".into(),
                reference: Reference::Tag("1.27".into())
            }
        );
        assert_eq!(
            route(&format!("/v2/a/b/c/manifests/{D}")),
            Route::Manifest {
                name: "a/b/c".into(),
                reference: Reference::Digest(D.into())
            }
        );
        assert_eq!(
            route(&format!("/v2/app/blobs/{D}")),
            Route::Blob {
                name: "app".into(),
                digest: D.into()
            }
        );
        assert_eq!(
            route("/v2/app/tags/list"),
            Route::Tags { name: "app".into() }
        );
        assert_eq!(
            route(&format!("/v2/app/referrers/{D}")),
            Route::Referrers {
                name: "app".into(),
                digest: D.into()
            }
        );
        assert_eq!(
            route("/v2/app/blobs/uploads/"),
            Route::Upload { name: "app".into() }
        );
        // A repository may itself be called "manifests".
        assert_eq!(
            route("/v2/x/manifests/manifests/latest"),
            Route::Manifest {
                name: "x/manifests".into(),
                reference: Reference::Tag("latest".into())
            }
        );
    }

    #[test]
    fn invalid_paths() {
        assert_eq!(route("/v3/"), Route::NotFound);
        assert_eq!(route("/"), Route::NotFound);
        assert_eq!(
            route("/v2/UPPER/manifests/x"),
            Route::Invalid("NAME_INVALID")
        );
        assert_eq!(
            route("/v2/a/../b/manifests/x"),
            Route::Invalid("NAME_INVALID")
        );
        assert_eq!(
            route("/v2/a/manifests/-bad"),
            Route::Invalid("MANIFEST_INVALID")
        );
        assert_eq!(
            route("/v2/a/blobs/sha256:abc"),
            Route::Invalid("DIGEST_INVALID")
        );
        assert_eq!(
            route("/v2/a/blobs/md5:abc"),
            Route::Invalid("DIGEST_INVALID")
        );
        assert_eq!(route("/v2/a/unknown"), Route::NotFound);
    }

    #[test]
    fn names_and_tags() {
        for ok in [
            "a",
            "library/nginx",
            "a.b",
            "a_b",
            "a__b",
            "a---b",
            "x/y/z9",
        ] {
            assert!(is_name(ok), "{ok}");
        }
        for bad in [
            "", "A", "a/", "/a", "a//b", "a..b", "a___b", "-a", "a-", "a b", "ä",
        ] {
            assert!(!is_name(bad), "{bad}");
        }
        assert!(is_tag("v1.2.3-rc_1"));
        assert!(is_tag("_x"));
        assert!(!is_tag(".x"));
        assert!(!is_tag(&"x".repeat(129)));
        assert!(is_tag(&"x".repeat(128)));
    }

    #[test]
    fn never_panics() {
        let mut s = String::from("/v2/a/manifests/b");
        for i in 0..2000u32 {
            let c = char::from_u32(32 + (i * 7919) % 96).unwrap_or('x');
            let pos = (i as usize * 31) % (s.len() + 1);
            if s.is_char_boundary(pos) {
                s.insert(pos, c);
            }
            let _ = route(&s);
        }
    }
}
