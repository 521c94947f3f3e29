//! `cache.store`: the shared cache tier on an S3-compatible bucket
//! (gateway/src/store). The secret access key is never in the config:
//! `secret_access_key_file` names a file only the gateway may read
//! (checked by `check-config` and at start, like an upstream proxy's
//! `password_file`), or `secret_access_key_env` names an environment
//! variable.

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;

use super::{ConfigError, validate::is_dns_name};

/// Default `cache.store.timeout`: one store request (a HEAD, a small PUT,
/// the first byte of a GET). Short, because a store that does not answer
/// is skipped, and the device waits for that decision.
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_secs(5);

/// `cache.store`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Store {
    /// `http://host:port` or `https://host[:port]`: the S3 endpoint
    /// (path-style requests: `endpoint/bucket/key`).
    pub endpoint: String,
    pub bucket: String,
    /// The signing region (`garage` for Garage, `us-east-1` for MinIO).
    /// Default `us-east-1`.
    #[serde(default = "default_region")]
    pub region: String,
    pub access_key_id: String,
    /// A file holding the secret access key (one trailing newline
    /// ignored), mode 0600 or stricter.
    #[serde(default)]
    pub secret_access_key_file: Option<PathBuf>,
    /// An environment variable holding the secret access key.
    #[serde(default)]
    pub secret_access_key_env: Option<String>,
    /// Prepended to every object key (`site-a/` shares one bucket between
    /// several sites). Default none.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Deadline of one store request. Default `5s`.
    #[serde(
        default = "default_timeout",
        deserialize_with = "super::sites::duration"
    )]
    pub timeout: Duration,
    /// A PEM file of CA certificates trusted for an `https://` endpoint
    /// besides the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// This gateway's name in lease objects. Default the host name plus a
    /// random suffix chosen at each start.
    #[serde(default)]
    pub gateway_id: Option<String>,
}

/// The key id is not secret, but the whole value is printed by `{:?}` in
/// places; the secret's source is named, never its value (which is not
/// here anyway).
impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key_file", &self.secret_access_key_file)
            .field("secret_access_key_env", &self.secret_access_key_env)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("ca_file", &self.ca_file)
            .field("gateway_id", &self.gateway_id)
            .finish()
    }
}

fn default_region() -> String {
    "us-east-1".to_owned()
}
fn default_timeout() -> Duration {
    DEFAULT_STORE_TIMEOUT
}

/// Why a secret could not be read (the value never appears).
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{0}")]
    File(#[from] crate::upstream::CredentialsError),
    #[error("environment variable `{0}` is not set or not UTF-8")]
    EnvMissing(String),
    #[error("environment variable `{0}` is empty")]
    EnvEmpty(String),
}

impl Store {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        const K: &str = "cache.store";
        endpoint_problem(&self.endpoint).map_or(Ok(()), |m| {
            Err(ConfigError::invalid(format!("{K}.endpoint"), m))
        })?;
        if let Some(m) = bucket_problem(&self.bucket) {
            return Err(ConfigError::invalid(format!("{K}.bucket"), m));
        }
        if self.region.is_empty() || self.region.contains(char::is_whitespace) {
            return Err(ConfigError::invalid(
                format!("{K}.region"),
                "must be a non-empty word (e.g. `garage`, `us-east-1`)",
            ));
        }
        if self.access_key_id.is_empty() || !self.access_key_id.is_ascii() {
            return Err(ConfigError::invalid(
                format!("{K}.access_key_id"),
                "must be a non-empty ASCII key id",
            ));
        }
        match (&self.secret_access_key_file, &self.secret_access_key_env) {
            (None, None) => {
                return Err(ConfigError::invalid(
                    format!("{K}.secret_access_key_file"),
                    "or secret_access_key_env is required (the secret is never written in the config)",
                ));
            }
            (Some(_), Some(_)) => {
                return Err(ConfigError::invalid(
                    format!("{K}.secret_access_key_env"),
                    "and secret_access_key_file are exclusive: give one",
                ));
            }
            (Some(file), None) if !file.is_absolute() => {
                return Err(ConfigError::invalid(
                    format!("{K}.secret_access_key_file"),
                    "must be an absolute path",
                ));
            }
            (None, Some(var)) if var.is_empty() || var.contains(['=', '\0']) => {
                return Err(ConfigError::invalid(
                    format!("{K}.secret_access_key_env"),
                    "must name an environment variable",
                ));
            }
            _ => {}
        }
        if let Some(prefix) = &self.prefix
            && let Some(m) = prefix_problem(prefix)
        {
            return Err(ConfigError::invalid(format!("{K}.prefix"), m));
        }
        if self.timeout < Duration::from_millis(100) || self.timeout > Duration::from_secs(300) {
            return Err(ConfigError::invalid(
                format!("{K}.timeout"),
                "must be between 100ms and 5m",
            ));
        }
        if let Some(file) = &self.ca_file
            && !file.is_absolute()
        {
            return Err(ConfigError::invalid(
                format!("{K}.ca_file"),
                "must be an absolute path",
            ));
        }
        if let Some(id) = &self.gateway_id
            && !gateway_id_ok(id)
        {
            return Err(ConfigError::invalid(
                format!("{K}.gateway_id"),
                "must be 1-64 characters of A-Z a-z 0-9 - _ .",
            ));
        }
        Ok(())
    }

    /// The secret access key, from its file (private mode checked) or its
    /// environment variable.
    pub fn secret(&self) -> Result<crate::upstream::Secret, SecretError> {
        if let Some(path) = &self.secret_access_key_file {
            return Ok(crate::upstream::read_password_file(path)?);
        }
        let var = self.secret_access_key_env.as_deref().unwrap_or_default();
        match std::env::var(var) {
            Ok(v) if v.is_empty() => Err(SecretError::EnvEmpty(var.to_owned())),
            Ok(v) => Ok(crate::upstream::Secret::new(v)),
            Err(_) => Err(SecretError::EnvMissing(var.to_owned())),
        }
    }

    /// The config key of the secret's source, for errors.
    pub fn secret_key(&self) -> &'static str {
        if self.secret_access_key_file.is_some() {
            "cache.store.secret_access_key_file"
        } else {
            "cache.store.secret_access_key_env"
        }
    }
}

/// Lease object names carry the id: short, and safe in a key.
fn gateway_id_ok(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Why an endpoint is not `http(s)://host[:port]`, if it is not.
fn endpoint_problem(url: &str) -> Option<String> {
    let lower = url.to_ascii_lowercase();
    let Some(rest) = lower
        .strip_prefix("http://")
        .or_else(|| lower.strip_prefix("https://"))
    else {
        return Some(format!("`{url}` is not an http:// or https:// URL"));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains('@') {
        return Some(
            "user-info in the URL is not allowed: credentials come from access_key_id and \
             secret_access_key_file / secret_access_key_env"
                .to_owned(),
        );
    }
    if authority.contains(['/', '?', '#']) {
        return Some(format!(
            "`{url}` has a path, query or fragment; write scheme://host[:port] (the bucket is `bucket`)"
        ));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(':') && !p.contains(']') => (h, Some(p)),
        _ => (authority, None),
    };
    if let Some(p) = port
        && p.parse::<u16>().ok().filter(|p| *p != 0).is_none()
    {
        return Some(format!("`{url}`: the port is not a number from 1 to 65535"));
    }
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => host.parse::<std::net::Ipv4Addr>().is_ok() || is_dns_name(host),
    };
    (!host_ok).then(|| format!("`{url}`: `{host}` is not a host name or IP address"))
}

/// S3 bucket names: 3-63 of a-z 0-9 . -, starting and ending alphanumeric.
fn bucket_problem(bucket: &str) -> Option<&'static str> {
    let ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
        && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
    (!ok).then_some("must be an S3 bucket name: 3-63 of a-z 0-9 . - (alphanumeric at both ends)")
}

/// A key prefix: path segments of safe characters, no empty or dot
/// segments (object_store refuses them).
fn prefix_problem(prefix: &str) -> Option<&'static str> {
    let trimmed = prefix.trim_matches('/');
    let ok = !trimmed.is_empty()
        && trimmed.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        });
    (!ok).then_some("must be path segments of A-Z a-z 0-9 - _ . (e.g. `site-a` or `eu/site-a`)")
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
