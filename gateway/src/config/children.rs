//! `children:`: this gateway as a parent (regional) gateway. Child
//! gateways whose site `upstream` names it connect here over mutual TLS,
//! present a client certificate `client_ca` issued (`gateway ca
//! issue-client`), and are served this gateway's own sites from its cache
//! (misses filled with its own credentials). And the site keys a child
//! uses to reach its parent: `client_cert`, `client_key`.

use std::{
    collections::HashSet,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use super::{Config, ConfigError, validate::is_dns_name};

/// The listener for child gateways.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Children {
    /// `ip:port` (or `[ipv6]:port`) addresses to listen on, at least one:
    /// the parent's addresses on the network its children reach it by.
    pub listen: Vec<String>,
    /// PEM file of the CA(s) whose client certificates are accepted.
    /// Default: the site CA (`tls.ca_dir/ca.pem`), which `gateway ca
    /// issue-client` signs with.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// The name children use for this gateway (their `upstream:` URL's
    /// host): its server certificate is minted for it by the site CA, so
    /// the CA must cover it (`gateway ca init` includes it).
    pub server_name: String,
}

impl Children {
    /// The listen addresses (validation guarantees they parse).
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.listen.iter().filter_map(|a| a.parse().ok()).collect()
    }

    /// The client CA file: `client_ca`, else the site CA's certificate.
    pub fn client_ca_file(&self, ca_dir: &Path) -> PathBuf {
        self.client_ca
            .clone()
            .unwrap_or_else(|| ca_dir.join(crate::tls::ca::CERT_FILE))
    }
}

impl Config {
    pub(super) fn validate_children(&self) -> Result<(), ConfigError> {
        for (i, site) in self.sites.iter().enumerate() {
            validate_site_identity(i, site)?;
        }
        let Some(c) = &self.children else {
            return Ok(());
        };
        if self.sites.is_empty() {
            return Err(ConfigError::invalid(
                "children",
                "a parent serves its children its own sites, and none is configured: add `sites:`",
            ));
        }
        if c.listen.is_empty() {
            return Err(ConfigError::invalid(
                "children.listen",
                "needs at least one ip:port (the address children reach this gateway at)",
            ));
        }
        let mut seen = HashSet::new();
        for (j, text) in c.listen.iter().enumerate() {
            let key = format!("children.listen[{j}]");
            let addr: SocketAddr = text.parse().map_err(|_| {
                ConfigError::invalid(
                    &key,
                    format!("`{text}` is not ip:port (write 10.0.9.1:8443 or [fd00::1]:8443)"),
                )
            })?;
            if addr.port() == 0 {
                return Err(ConfigError::invalid(key, "the port must be 1 to 65535"));
            }
            if addr.port() == self.proxy.port {
                return Err(ConfigError::invalid(
                    key,
                    format!(
                        "port {} is the proxy's own port (proxy.port)",
                        self.proxy.port
                    ),
                ));
            }
            if addr.ip().is_multicast() {
                return Err(ConfigError::invalid(key, "is a multicast address"));
            }
            if self.admin.address() == Some(addr) {
                return Err(ConfigError::invalid(key, "is the admin listener's address"));
            }
            if !seen.insert(addr) {
                return Err(ConfigError::invalid(
                    key,
                    format!("`{text}` is listed twice"),
                ));
            }
        }
        if !is_dns_name(&c.server_name) {
            return Err(ConfigError::invalid(
                "children.server_name",
                format!(
                    "`{}` is not a DNS name (children verify the parent's certificate by it)",
                    c.server_name
                ),
            ));
        }
        if let Some(ca) = &c.client_ca
            && !ca.is_absolute()
        {
            return Err(ConfigError::invalid(
                "children.client_ca",
                "must be an absolute path",
            ));
        }
        Ok(())
    }

    /// What only the host can tell: the client certificate and key files
    /// of sites that reach a parent (readable, parsable, key private), the
    /// children's client CA, and that the site CA covers
    /// `children.server_name`.
    pub(super) fn check_children_files(&self) -> Result<(), ConfigError> {
        use crate::tls::TlsError;
        for (i, site) in self.sites.iter().enumerate() {
            let (Some(cert), Some(key)) = (&site.client_cert, &site.client_key) else {
                continue;
            };
            if let Err(e) = crate::tls::identity::ClientIdentity::load(cert, key) {
                let which = match &e {
                    TlsError::KeyPermissions { .. } | TlsError::NoPrivateKey { .. } => "client_key",
                    TlsError::Io { path, .. } if path == key => "client_key",
                    _ => "client_cert",
                };
                return Err(ConfigError::invalid(
                    format!("sites[{i}].{which}"),
                    e.to_string(),
                ));
            }
        }
        let Some(c) = &self.children else {
            return Ok(());
        };
        if let Some(ca) = &c.client_ca
            && let Err(e) = crate::tls::identity::client_roots(ca)
        {
            return Err(ConfigError::invalid("children.client_ca", e.to_string()));
        }
        match crate::tls::rotation::check_hosts(
            &self.tls.ca_dir,
            std::slice::from_ref(&c.server_name),
        ) {
            Ok(()) => Ok(()),
            Err(crate::tls::rotation::HostCheck::Outside { message, .. }) => {
                Err(ConfigError::invalid("children.server_name", message))
            }
            Err(crate::tls::rotation::HostCheck::Unreadable(e)) => Err(ConfigError::invalid(
                "tls.ca_dir",
                format!("cannot check the site CA: {e}"),
            )),
        }
    }
}

fn validate_site_identity(i: usize, site: &super::Site) -> Result<(), ConfigError> {
    let key = format!("sites[{i}]");
    match (&site.client_cert, &site.client_key) {
        (None, None) => return Ok(()),
        (Some(_), None) => {
            return Err(ConfigError::invalid(
                format!("{key}.client_key"),
                "is required with client_cert",
            ));
        }
        (None, Some(_)) => {
            return Err(ConfigError::invalid(
                format!("{key}.client_cert"),
                "is required with client_key",
            ));
        }
        (Some(cert), Some(k)) => {
            for (name, path) in [("client_cert", cert), ("client_key", k)] {
                if !path.is_absolute() {
                    return Err(ConfigError::invalid(
                        format!("{key}.{name}"),
                        "must be an absolute path",
                    ));
                }
            }
        }
    }
    if !site.upstream_url().starts_with("https://") {
        return Err(ConfigError::invalid(
            format!("{key}.upstream"),
            format!(
                "`{}`: a parent gateway (client_cert) is reached over https:// only",
                site.upstream_url()
            ),
        ));
    }
    if site.credentials.is_some() {
        return Err(ConfigError::invalid(
            format!("{key}.credentials"),
            "a site fed by a parent gateway (client_cert) sends no origin credentials: \
             the parent holds them",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "
devices:
  interfaces: [dev0]
manager:
  name: wfm.site.example
  addresses: [\"10.0.0.5:443\"]
";

    fn child_site(extra: &str) -> String {
        format!(
            "{BASE}sites:
  - host: registry.example.test
    kind: oci
    upstream: https://parent.region.test:8443
    ca_file: /etc/gateway/parent-ca.pem
{extra}"
        )
    }

    fn err(text: &str) -> String {
        match Config::parse(text) {
            Ok(_) => panic!("config should be rejected:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_child_site_names_certificate_and_key() {
        let c = Config::parse(&child_site(
            "    client_cert: /etc/gateway/child.pem\n    client_key: /etc/gateway/child.key\n",
        ))
        .expect("a child site");
        assert!(c.sites[0].via_parent());
        let e = err(&child_site("    client_cert: /etc/gateway/child.pem\n"));
        assert!(e.contains("`sites[0].client_key`: is required"), "{e}");
        let e = err(&child_site("    client_key: /etc/gateway/child.key\n"));
        assert!(e.contains("`sites[0].client_cert`: is required"), "{e}");
        let e = err(&child_site(
            "    client_cert: child.pem\n    client_key: /etc/gateway/child.key\n",
        ));
        assert!(
            e.contains("`sites[0].client_cert`: must be an absolute"),
            "{e}"
        );
        let e = err(&format!(
            "{BASE}sites:\n  - host: r.test\n    kind: oci\n    upstream: http://parent.test:8080\n    client_cert: /c.pem\n    client_key: /c.key\n"
        ));
        assert!(
            e.contains("`sites[0].upstream`") && e.contains("https://"),
            "{e}"
        );
        let e = err(&child_site(
            "    client_cert: /c.pem\n    client_key: /c.key\n    credentials:\n      username: u\n      password_file: /p\n",
        ));
        assert!(e.contains("`sites[0].credentials`"), "{e}");
        let e = err(&child_site("    client_certificate: /c.pem\n"));
        assert!(e.contains("client_certificate"), "{e}");
    }

    fn parent(children: &str) -> String {
        format!(
            "{BASE}sites:\n  - host: registry.example.test\n    kind: oci\nchildren:\n{children}"
        )
    }

    #[test]
    fn the_children_listener_is_checked() {
        let c = Config::parse(&parent(
            "  listen: [\"10.0.9.1:8443\", \"[fd00:9::1]:8443\"]\n  server_name: gw.region.test\n",
        ))
        .expect("a parent");
        let ch = c.children.as_ref().expect("children");
        assert_eq!(ch.addresses().len(), 2);
        assert_eq!(
            ch.client_ca_file(&c.tls.ca_dir),
            c.tls.ca_dir.join("ca.pem"),
            "the site CA by default"
        );
        for (children, key) in [
            ("  listen: []\n  server_name: gw.test\n", "children.listen"),
            (
                "  listen: [\"10.0.9.1\"]\n  server_name: gw.test\n",
                "children.listen[0]",
            ),
            (
                "  listen: [\"10.0.9.1:15001\"]\n  server_name: gw.test\n",
                "children.listen[0]",
            ),
            (
                "  listen: [\"10.0.9.1:1\", \"10.0.9.1:1\"]\n  server_name: gw.test\n",
                "children.listen[1]",
            ),
            (
                "  listen: [\"10.0.9.1:8443\"]\n  server_name: \"gw test\"\n",
                "children.server_name",
            ),
            (
                "  listen: [\"10.0.9.1:8443\"]\n  server_name: gw.test\n  client_ca: ca.pem\n",
                "children.client_ca",
            ),
        ] {
            let e = err(&parent(children));
            assert!(e.contains(&format!("`{key}`")), "{key}: {e}");
        }
        let e = err(&parent("  listen: [\"10.0.9.1:8443\"]\n"));
        assert!(e.contains("server_name"), "{e}");
        let e = err(&format!(
            "{BASE}children:\n  listen: [\"10.0.9.1:8443\"]\n  server_name: gw.test\n"
        ));
        assert!(e.contains("`children`") && e.contains("sites"), "{e}");
    }

    #[test]
    fn a_readable_client_key_is_refused_on_the_host() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca");
        crate::tls::init(&ca, &["parent.test".to_owned()], false).expect("ca");
        let loaded = crate::tls::SiteCa::load(&ca).expect("load");
        let (cert, key) = crate::tls::identity::issue_client(
            &loaded,
            "site-a",
            std::time::Duration::from_secs(3600),
        )
        .expect("issue");
        let (cert, key) =
            crate::tls::identity::write_client(dir.path(), "site-a", &cert, &key).expect("write");
        let text = child_site(&format!(
            "    client_cert: {}\n    client_key: {}\n",
            cert.display(),
            key.display()
        ));
        let c = Config::parse(&text).expect("parses: the files are read on the host");
        c.check_children_files().expect("0600 key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let e = c.check_children_files().expect_err("0640").to_string();
        assert!(
            e.contains("`sites[0].client_key`") && e.contains("chmod 600"),
            "{e}"
        );
        std::fs::remove_file(&cert).expect("rm");
        let e = c.check_children_files().expect_err("no cert").to_string();
        assert!(e.contains("`sites[0].client_cert`"), "{e}");
    }

    #[test]
    fn the_commented_examples_in_gateway_yaml_are_valid() {
        // config/gateway.yaml shows `children:` and a site's client_cert
        // commented out; uncommented, they must be a config the gateway
        // accepts (the example site has no credentials to conflict).
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/gateway.yaml");
        let text = std::fs::read_to_string(path).expect("example");
        let mut out = Vec::new();
        let mut in_block = false;
        for line in text.lines() {
            if line == "# children:" {
                in_block = true;
            }
            let uncomment = in_block
                || line.starts_with("    # client_cert:")
                || line.starts_with("    # client_key:");
            out.push(if uncomment {
                line.replacen("# ", "", 1)
            } else {
                line.to_owned()
            });
        }
        let c = Config::parse(&out.join("\n")).expect("uncommented example parses");
        let ch = c.children.expect("children");
        assert_eq!(ch.server_name, "gateway.region.example");
        assert_eq!(ch.addresses().len(), 2);
        assert!(c.sites[0].via_parent());
    }
}
