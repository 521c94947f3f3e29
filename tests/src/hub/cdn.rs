//! The hub's CDN (`production.cloudflare.docker.com`): nginx serving the
//! registry's storage directory read-only over TLS. The registry's
//! `redirect` storage middleware sends blob GETs here with the storage
//! path of the blob's data (`/docker/registry/v2/blobs/sha256/ab/<hex>/data`),
//! which nginx maps onto the same directory.
//!
//! Its access log (combined format, one line per request) tells the tests
//! which blobs were fetched from the CDN, i.e. that the redirect happened.
//! The process is [`crate::nginx`]'s.

use std::{net::Ipv4Addr, path::Path};

use anyhow::Result;

use crate::{
    nginx::{Nginx, NginxConfig, ServerCert},
    registry::access_log::AccessLine,
};

/// nginx serving `storage` at `addr:443` in a namespace.
pub struct Cdn(Nginx);

/// The files nginx needs to start.
pub struct CdnFiles<'a> {
    /// The registry's filesystem storage root.
    pub storage: &'a Path,
    /// The TLS certificate (PEM) and key for the CDN's name.
    pub cert: &'a Path,
    pub key: &'a Path,
    pub server_name: &'a str,
}

/// Only blob data under `/docker/registry/v2/blobs/` is served, with GET
/// (and so HEAD); the rest of the storage (repositories, uploads) answers
/// 404, as a CDN that holds blobs only.
const LOCATIONS: &str = "        location /docker/registry/v2/blobs/ {
            limit_except GET {
                deny all;
            }
        }
        location / {
            return 404;
        }
";

impl Cdn {
    /// Writes `dir/nginx.conf` and starts nginx in `ns` on `addr:443`.
    pub fn start(ns: &str, addr: Ipv4Addr, dir: &Path, files: &CdnFiles<'_>) -> Result<Self> {
        let mut config = NginxConfig::tls(
            "hub CDN",
            addr,
            &[files.server_name],
            files.storage,
            ServerCert {
                cert: files.cert.to_owned(),
                key: files.key.to_owned(),
            },
        );
        config.locations = LOCATIONS.to_owned();
        Ok(Self(Nginx::start(ns, dir, config)?))
    }

    /// Every request the CDN served so far.
    pub fn access_log(&self) -> Result<Vec<AccessLine>> {
        self.0.access_log()
    }

    /// nginx's error log and stderr, for messages.
    pub fn logs(&self) -> String {
        self.0.logs()
    }

    pub fn pid(&self) -> Option<u32> {
        self.0.pid()
    }

    pub fn stop(&mut self) {
        self.0.stop();
    }
}

/// The storage path of a blob's data, as the redirect middleware puts it
/// in the CDN URL.
pub fn blob_path(digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    format!(
        "/docker/registry/v2/blobs/sha256/{}/{hex}/data",
        &hex[..2.min(hex.len())]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_paths_follow_the_filesystem_driver() {
        assert_eq!(
            blob_path("sha256:abcdef"),
            "/docker/registry/v2/blobs/sha256/ab/abcdef/data"
        );
    }
}
