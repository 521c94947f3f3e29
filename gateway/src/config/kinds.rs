//! The keys that belong to one site kind (`helm`, `files`), checked for the
//! kind they are given with, and the path globs of `files` sites.

use std::collections::HashSet;

use super::{
    Checksum, Config, ConfigError, Site, SiteKind,
    validate::{is_dns_name, passthrough_named},
};

impl Config {
    /// Each kind's own keys, and hosts served twice across sites (a site's
    /// host or a helm site's chart host).
    pub(super) fn validate_kinds(&self) -> Result<(), ConfigError> {
        let mut served = HashSet::new();
        for (i, site) in self.sites.iter().enumerate() {
            let key = format!("sites[{i}]");
            only_for(&key, site)?;
            for (j, host) in site.chart_hosts.iter().enumerate() {
                let key = format!("{key}.chart_hosts[{j}]");
                if !is_dns_name(host) {
                    return Err(ConfigError::invalid(
                        key,
                        format!("`{host}` is not a DNS name (no scheme, port or path)"),
                    ));
                }
                if let Some(service) = passthrough_named(self, host) {
                    return Err(ConfigError::invalid(
                        key,
                        format!(
                            "is the name of passthrough service `{service}`: it is passed through, never terminated"
                        ),
                    ));
                }
            }
            for host in site.served_hosts() {
                if !served.insert(host.clone()) {
                    return Err(ConfigError::invalid(
                        key,
                        format!("`{host}` is served by another site too (a host or a chart host)"),
                    ));
                }
            }
            if let Some(ttl) = site.ttl
                && ttl.as_secs() < 1
            {
                return Err(ConfigError::invalid(
                    format!("{key}.ttl"),
                    "must be at least 1s",
                ));
            }
            if site.kind == SiteKind::Files {
                validate_files(&key, site)?;
            }
        }
        Ok(())
    }
}

/// Keys of one kind given to another.
fn only_for(key: &str, site: &Site) -> Result<(), ConfigError> {
    let given = [
        (
            "chart_hosts",
            !site.chart_hosts.is_empty(),
            &[SiteKind::Helm][..],
        ),
        (
            "ttl",
            site.ttl.is_some(),
            &[SiteKind::Helm, SiteKind::Files][..],
        ),
        ("paths", !site.paths.is_empty(), &[SiteKind::Files][..]),
        (
            "checksums",
            !site.checksums.is_empty(),
            &[SiteKind::Files][..],
        ),
    ];
    for (name, present, kinds) in given {
        if present && !kinds.contains(&site.kind) {
            let kinds: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
            return Err(ConfigError::invalid(
                format!("{key}.{name}"),
                format!(
                    "is a key of kind {} sites, not of kind {}",
                    kinds.join(" and "),
                    site.kind.as_str()
                ),
            ));
        }
    }
    Ok(())
}

fn validate_files(key: &str, site: &Site) -> Result<(), ConfigError> {
    if site.paths.is_empty() {
        return Err(ConfigError::invalid(
            format!("{key}.paths"),
            "a files site needs the paths it serves, as globs: [\"/releases/**\", \"/keys/*.asc\"]",
        ));
    }
    for (j, glob) in site.paths.iter().enumerate() {
        check_glob(glob).map_err(|why| {
            ConfigError::invalid(format!("{key}.paths[{j}]"), format!("`{glob}` {why}"))
        })?;
    }
    for (j, checksum) in site.checksums.iter().enumerate() {
        let key = format!("{key}.checksums[{j}]");
        let (field, path) = match checksum {
            Checksum::Path { path, sha256 } => {
                if parse_sha256(sha256).is_none() {
                    return Err(ConfigError::invalid(
                        format!("{key}.sha256"),
                        format!("`{sha256}` is not 64 hex digits (with or without `sha256:`)"),
                    ));
                }
                ("path", path)
            }
            Checksum::File { file } => ("file", file),
        };
        if check_path(path).is_err() || !site.paths.iter().any(|g| glob_match(g, path)) {
            return Err(ConfigError::invalid(
                format!("{key}.{field}"),
                format!("`{path}` is not an absolute path under one of this site's `paths`"),
            ));
        }
    }
    Ok(())
}

/// A sha256 as 64 hex digits, `sha256:` optional; lowercase.
pub fn parse_sha256(text: &str) -> Option<String> {
    let hex = text.strip_prefix("sha256:").unwrap_or(text);
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| hex.to_ascii_lowercase())
}

/// An absolute request path without dot segments, query or fragment.
fn check_path(path: &str) -> Result<(), &'static str> {
    if !path.starts_with('/') {
        return Err("must start with /");
    }
    if path.contains(['?', '#', '\\']) || path.bytes().any(|b| b.is_ascii_control()) {
        return Err("may not hold ?, #, \\ or control characters");
    }
    if path.split('/').any(|s| s == "." || s == "..") {
        return Err("may not hold . or .. segments");
    }
    Ok(())
}

/// A path glob: absolute, `**` only as a whole segment.
fn check_glob(glob: &str) -> Result<(), &'static str> {
    check_path(glob)?;
    if glob.split('/').any(|s| s.contains("**") && s != "**") {
        return Err("may use ** only as a whole segment (/releases/**)");
    }
    Ok(())
}

/// Whether `path` matches `glob`: `*` is any run of characters within one
/// segment, `**` any number of whole segments (also none).
pub fn glob_match(glob: &str, path: &str) -> bool {
    let globs: Vec<&str> = glob.split('/').collect();
    let parts: Vec<&str> = path.split('/').collect();
    segments_match(&globs, &parts)
}

fn segments_match(globs: &[&str], parts: &[&str]) -> bool {
    match globs.split_first() {
        None => parts.is_empty(),
        Some((&"**", rest)) => (0..=parts.len()).any(|skip| segments_match(rest, &parts[skip..])),
        Some((g, rest)) => match parts.split_first() {
            Some((p, tail)) => {
                segment_match(g.as_bytes(), p.as_bytes()) && segments_match(rest, tail)
            }
            None => false,
        },
    }
}

/// `*` within one segment (iterative, with backtracking to the last star).
fn segment_match(glob: &[u8], text: &[u8]) -> bool {
    let (mut g, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if g < glob.len() && glob[g] == b'*' {
            star = Some((g, t));
            g += 1;
        } else if g < glob.len() && glob[g] == text[t] {
            g += 1;
            t += 1;
        } else if let Some((sg, st)) = star {
            g = sg + 1;
            t = st + 1;
            star = Some((sg, st + 1));
        } else {
            return false;
        }
    }
    glob[g..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_within_and_across_segments() {
        assert!(glob_match("/releases/**", "/releases/app-1.0.tar.gz"));
        assert!(glob_match("/releases/**", "/releases/v1/a/b.bin"));
        assert!(glob_match("/releases/**", "/releases"));
        assert!(!glob_match("/releases/**", "/releasesX/a"));
        assert!(!glob_match("/releases/**", "/other/a"));
        assert!(glob_match("/keys/*.asc", "/keys/site.asc"));
        assert!(!glob_match("/keys/*.asc", "/keys/sub/site.asc"));
        assert!(!glob_match("/keys/*.asc", "/keys/site.asc.sig"));
        assert!(glob_match("/a/**/x-*.bin", "/a/b/c/x-1.bin"));
        assert!(glob_match("/a/**/x-*.bin", "/a/x-1.bin"));
        assert!(glob_match("/*", "/anything"));
        assert!(!glob_match("/*", "/a/b"));
    }

    #[test]
    fn globs_and_paths_are_checked() {
        assert!(check_glob("/releases/**").is_ok());
        assert!(check_glob("releases/**").is_err());
        assert!(check_glob("/releases/a**").is_err());
        assert!(check_glob("/releases/../etc").is_err());
        assert!(check_glob("/a?b").is_err());
        assert_eq!(
            parse_sha256(&format!("sha256:{}", "AB".repeat(32))),
            Some("ab".repeat(32))
        );
        assert_eq!(parse_sha256("abc"), None);
    }
}
