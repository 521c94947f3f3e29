//! `mirror:` entries: repositories of an OCI site whose matching tags the
//! daemon fetches ahead of any device, on a schedule, and pins (the sync
//! itself: registry/oci/mirror.rs; the schedule: mirror/).
//!
//! Durations, rates and times are kept as the text the admin wrote (so a
//! `gateway mirror run` can send the entries to the daemon as they are);
//! [`Mirror::validate`] parses each once, naming the key on error, and the
//! accessors parse again, knowing it succeeds.

use std::{collections::HashMap, time::Duration};

use serde::{Deserialize, Serialize};

use super::{ConfigError, SiteKind, glob_match};

/// The shortest `every`: shorter would mostly re-list tags.
pub const MIN_EVERY: Duration = Duration::from_secs(60);
/// The longest `every`: a mirror that runs less than monthly is not one.
pub const MAX_EVERY: Duration = Duration::from_secs(31 * 24 * 3600);
/// The lowest `max_rate`, 1 KiB/s.
pub const MIN_RATE: u64 = 1024;

/// One `mirror:` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    /// The host of a configured `kind: oci` site.
    pub site: String,
    /// Repositories on it (`line-3/app`), exact names. At least one.
    pub repositories: Vec<String>,
    /// Tag patterns (`v1.*`, `latest`): `*` matches any run of
    /// characters, `?` one. At least one.
    pub tags: Vec<String>,
    /// `os/arch` or `os/arch/variant` kept from an image index. Default
    /// empty: every platform (and the index's other entries).
    #[serde(default)]
    pub platforms: Vec<String>,
    /// Run this often, counted from the daemon's start (the first run a
    /// few seconds after it): `6h`, `30m`. One of `every` and `at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
    /// Run daily at this local time, `HH:MM`. One of `every` and `at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    /// The most the mirror pulls per second, `10MiB/s`. Default none.
    /// Devices' own fills are never limited by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rate: Option<String>,
    /// `HH:MM-HH:MM`, local time, may wrap midnight: a scheduled run
    /// starts only inside it and stops fetching when it ends. Default
    /// none (any time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
}

/// When an entry runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    Every(Duration),
    /// Daily at this minute of the local day.
    At(u32),
}

/// A daily window of local time, in minutes of the day; `start > end`
/// wraps midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: u32,
    pub end: u32,
}

const DAY: u32 = 24 * 3600;

impl Window {
    /// Whether second `sod` of the local day is inside.
    pub fn contains(self, sod: u32) -> bool {
        let (s, e) = (self.start * 60, self.end * 60);
        if s < e {
            (s..e).contains(&sod)
        } else {
            sod >= s || sod < e
        }
    }

    /// Seconds from second `sod` of the day until the window next opens
    /// (0 inside it).
    pub fn until_open(self, sod: u32) -> u32 {
        if self.contains(sod) {
            0
        } else {
            until(sod, self.start * 60)
        }
    }

    /// Seconds from second `sod` (inside) until the window closes.
    pub fn until_close(self, sod: u32) -> u32 {
        until(sod, self.end * 60)
    }
}

/// Seconds from second `from` of a day to the next second `to` (a whole
/// day when they are equal).
pub fn until(from: u32, to: u32) -> u32 {
    let (from, to) = (from % DAY, to % DAY);
    if to > from {
        to - from
    } else {
        DAY - from + to
    }
}

impl Mirror {
    /// A stable name for this entry (runs of one entry never overlap).
    pub fn label(&self) -> String {
        format!("{}/{}", self.site, self.repositories.join(","))
    }

    pub fn schedule(&self) -> Schedule {
        match (&self.every, &self.at) {
            (Some(every), _) => Schedule::Every(
                humantime::parse_duration(every).unwrap_or(Duration::from_secs(6 * 3600)),
            ),
            (None, Some(at)) => Schedule::At(parse_clock(at).unwrap_or(0)),
            // Validation requires one of the two.
            (None, None) => Schedule::Every(Duration::from_secs(6 * 3600)),
        }
    }

    /// Bytes per second, if limited.
    pub fn rate(&self) -> Option<u64> {
        self.max_rate.as_deref().and_then(|r| parse_rate(r).ok())
    }

    pub fn window(&self) -> Option<Window> {
        self.window.as_deref().and_then(|w| parse_window(w).ok())
    }

    /// Whether tag `tag` matches one of the patterns.
    pub fn wants_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|p| tag_match(p, tag))
    }

    /// Checks one entry; `key` is `mirror[i]`.
    fn validate(&self, key: &str, sites: &HashMap<String, SiteKind>) -> Result<(), ConfigError> {
        let site = self.site.to_ascii_lowercase();
        match sites.get(&site) {
            Some(SiteKind::Oci) => {}
            Some(kind) => {
                return Err(ConfigError::invalid(
                    format!("{key}.site"),
                    format!(
                        "`{}` is a {} site: only oci sites are mirrored",
                        self.site,
                        kind.as_str()
                    ),
                ));
            }
            None => {
                return Err(ConfigError::invalid(
                    format!("{key}.site"),
                    format!("`{}` is not a configured site (sites[].host)", self.site),
                ));
            }
        }
        if self.repositories.is_empty() {
            return Err(ConfigError::invalid(
                format!("{key}.repositories"),
                "names no repository",
            ));
        }
        for (j, repo) in self.repositories.iter().enumerate() {
            if !is_repository(repo) {
                return Err(ConfigError::invalid(
                    format!("{key}.repositories[{j}]"),
                    format!(
                        "`{repo}` is not a repository name (lowercase path components like line-3/app)"
                    ),
                ));
            }
        }
        if self.tags.is_empty() {
            return Err(ConfigError::invalid(
                format!("{key}.tags"),
                "names no tag pattern (write [\"*\"] for every tag)",
            ));
        }
        for (j, tag) in self.tags.iter().enumerate() {
            let ok = !tag.is_empty()
                && tag.len() <= 128
                && tag
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-*?".contains(&b));
            if !ok {
                return Err(ConfigError::invalid(
                    format!("{key}.tags[{j}]"),
                    format!(
                        "`{tag}` is not a tag pattern (letters, digits, `_ . -`, and `*` or `?`)"
                    ),
                ));
            }
        }
        for (j, p) in self.platforms.iter().enumerate() {
            let parts: Vec<&str> = p.split('/').collect();
            let ok = (2..=3).contains(&parts.len())
                && parts.iter().all(|s| {
                    !s.is_empty()
                        && s.bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                });
            if !ok {
                return Err(ConfigError::invalid(
                    format!("{key}.platforms[{j}]"),
                    format!("`{p}` is not a platform like linux/amd64 or linux/arm/v7"),
                ));
            }
        }
        match (&self.every, &self.at) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::invalid(
                    format!("{key}.at"),
                    "give `every` or `at`, not both",
                ));
            }
            (None, None) => {
                return Err(ConfigError::invalid(
                    key.to_owned(),
                    "needs a schedule: `every: 6h` or `at: \"02:30\"`",
                ));
            }
            (Some(every), None) => {
                let d = humantime::parse_duration(every).map_err(|e| {
                    ConfigError::invalid(
                        format!("{key}.every"),
                        format!("`{every}` is not a duration like 6h or 30m: {e}"),
                    )
                })?;
                if d < MIN_EVERY || d > MAX_EVERY {
                    return Err(ConfigError::invalid(
                        format!("{key}.every"),
                        format!("`{every}` is outside 1m to 31 days"),
                    ));
                }
            }
            (None, Some(at)) => {
                parse_clock(at).map_err(|m| ConfigError::invalid(format!("{key}.at"), m))?;
            }
        }
        if let Some(rate) = &self.max_rate {
            parse_rate(rate).map_err(|m| ConfigError::invalid(format!("{key}.max_rate"), m))?;
        }
        if let Some(window) = &self.window {
            let w = parse_window(window)
                .map_err(|m| ConfigError::invalid(format!("{key}.window"), m))?;
            if let Some(at) = self.at.as_deref().and_then(|a| parse_clock(a).ok())
                && !w.contains(at * 60)
            {
                return Err(ConfigError::invalid(
                    format!("{key}.at"),
                    format!(
                        "`{}` is outside window `{window}`: the run would never start",
                        self.at.as_deref().unwrap_or_default()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Checks every entry, and that no repository of a site is mirrored by
/// two entries (their pins would fight).
pub(super) fn validate(
    mirrors: &[Mirror],
    sites: &HashMap<String, SiteKind>,
) -> Result<(), ConfigError> {
    let mut seen: HashMap<(String, &str), usize> = HashMap::new();
    for (i, m) in mirrors.iter().enumerate() {
        let key = format!("mirror[{i}]");
        m.validate(&key, sites)?;
        for (j, repo) in m.repositories.iter().enumerate() {
            if let Some(first) = seen.insert((m.site.to_ascii_lowercase(), repo), i) {
                return Err(ConfigError::invalid(
                    format!("{key}.repositories[{j}]"),
                    format!("`{repo}` on {} is mirrored by mirror[{first}] too", m.site),
                ));
            }
        }
    }
    Ok(())
}

/// `*` any run of characters, `?` one character; the rest literal.
pub fn tag_match(pattern: &str, tag: &str) -> bool {
    // Tags hold no `/`, so the path glob's one segment is the tag; `?` is
    // turned into a single-character check here.
    if !pattern.contains('?') {
        return glob_match(pattern, tag);
    }
    fn go(p: &[u8], t: &[u8]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some((b'*', rest)) => (0..=t.len()).any(|k| go(rest, &t[k..])),
            Some((b'?', rest)) => !t.is_empty() && go(rest, &t[1..]),
            Some((c, rest)) => t.first() == Some(c) && go(rest, &t[1..]),
        }
    }
    go(pattern.as_bytes(), tag.as_bytes())
}

/// A distribution repository name: lowercase components of
/// `[a-z0-9]` joined by `.`, `_`, `__`, `-`, separated by `/`.
fn is_repository(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.split('/').all(|c| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && c.as_bytes()[0].is_ascii_alphanumeric()
                && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
        })
}

/// `HH:MM` to a minute of the day.
pub fn parse_clock(text: &str) -> Result<u32, String> {
    let bad = || format!("`{text}` is not a local time like 02:30 (HH:MM, 00:00 to 23:59)");
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: u32 = h.parse().map_err(|_| bad())?;
    let m: u32 = m.parse().map_err(|_| bad())?;
    if h > 23 || m > 59 {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

/// `HH:MM-HH:MM`.
pub fn parse_window(text: &str) -> Result<Window, String> {
    let (s, e) = text
        .split_once('-')
        .ok_or_else(|| format!("`{text}` is not a window like 01:00-05:00"))?;
    let w = Window {
        start: parse_clock(s.trim())?,
        end: parse_clock(e.trim())?,
    };
    if w.start == w.end {
        return Err(format!(
            "`{text}` is empty (start and end are the same): leave `window` out for any time"
        ));
    }
    Ok(w)
}

/// `10MiB/s`, `500KB/s`: bytes per second.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let bad = |why: &str| format!("`{text}` is not a rate like 10MiB/s: {why}");
    let size = text
        .trim()
        .strip_suffix("/s")
        .ok_or_else(|| bad("it must end in /s"))?;
    let bytes = size
        .trim()
        .parse::<bytesize::ByteSize>()
        .map_err(|e| bad(&e.to_string()))?
        .as_u64();
    if bytes < MIN_RATE {
        return Err(format!("`{text}` is below the least rate, 1KiB/s"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests;
