//! `upstream:`: how long the gateway waits on the sites' registries, and
//! the progress it demands of a body (all sites alike).

use serde::Deserialize;

use super::{Config, ConfigError};

/// The longest any of the `_secs` keys may be: an hour is already far
/// past anything useful, and it keeps deadlines far from overflow.
const MAX_SECS: u64 = 3600;

/// The upstream client's timeouts and progress floor.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// Seconds for a TCP connect, per address tried. Default 10.
    #[serde(default = "default_connect")]
    pub connect_timeout_secs: u64,
    /// Seconds from sending a request to its status line and headers,
    /// per attempt, connect and TLS handshake included. Default 30.
    #[serde(default = "default_headers")]
    pub headers_timeout_secs: u64,
    /// Seconds a body may go without a byte before it fails. Default 30.
    #[serde(default = "default_body_idle")]
    pub body_idle_secs: u64,
    /// Bytes per second a body must average over each window of
    /// `min_body_rate_window_secs` (after the first) or fail; 0 disables
    /// the floor. Default 4096 (see `upstream::DEFAULT_MIN_BODY_RATE`).
    #[serde(default = "default_min_body_rate")]
    pub min_body_rate: u64,
    /// The window `min_body_rate` is averaged over, also the grace before
    /// the first check. Default 30.
    #[serde(default = "default_window")]
    pub min_body_rate_window_secs: u64,
}

fn default_connect() -> u64 {
    10
}
fn default_headers() -> u64 {
    30
}
fn default_body_idle() -> u64 {
    crate::upstream::DEFAULT_BODY_IDLE.as_secs()
}
fn default_min_body_rate() -> u64 {
    crate::upstream::DEFAULT_MIN_BODY_RATE
}
fn default_window() -> u64 {
    crate::upstream::DEFAULT_BODY_RATE_WINDOW.as_secs()
}

impl Default for Upstream {
    fn default() -> Self {
        Self {
            connect_timeout_secs: default_connect(),
            headers_timeout_secs: default_headers(),
            body_idle_secs: default_body_idle(),
            min_body_rate: default_min_body_rate(),
            min_body_rate_window_secs: default_window(),
        }
    }
}

impl Config {
    pub(super) fn validate_upstream(&self) -> Result<(), ConfigError> {
        let u = &self.upstream;
        for (key, v) in [
            ("upstream.connect_timeout_secs", u.connect_timeout_secs),
            ("upstream.headers_timeout_secs", u.headers_timeout_secs),
            ("upstream.body_idle_secs", u.body_idle_secs),
            (
                "upstream.min_body_rate_window_secs",
                u.min_body_rate_window_secs,
            ),
        ] {
            if v == 0 {
                return Err(ConfigError::invalid(
                    key,
                    "must be at least 1 (a zero wait would fail every request)",
                ));
            }
            if v > MAX_SECS {
                return Err(ConfigError::invalid(
                    key,
                    format!("must be at most {MAX_SECS} (an hour)"),
                ));
            }
        }
        if u.headers_timeout_secs < u.connect_timeout_secs {
            return Err(ConfigError::invalid(
                "upstream.headers_timeout_secs",
                format!(
                    "{} is less than upstream.connect_timeout_secs ({}): the wait for headers \
                     includes the connect",
                    u.headers_timeout_secs, u.connect_timeout_secs
                ),
            ));
        }
        // A device whose request waits on upstream sees no byte meanwhile:
        // the proxy's idle timeout would close its connection first and
        // the stall would never be reported as upstream's.
        let idle = self.proxy.idle_timeout_secs;
        for (key, v) in [
            ("upstream.headers_timeout_secs", u.headers_timeout_secs),
            ("upstream.body_idle_secs", u.body_idle_secs),
        ] {
            if v >= idle {
                return Err(ConfigError::invalid(
                    key,
                    format!(
                        "{v} is not less than proxy.idle_timeout_secs ({idle}): devices' \
                         connections would be closed as idle before a stalled upstream is \
                         reported"
                    ),
                ));
            }
        }
        Ok(())
    }
}
