//! Upstream credentials: the password is read once, when the site's
//! [`super::Upstream`] is built, from `password_file` or `password_env`,
//! and is never printed.
//!
//! Errors name the file or the variable, never the content. A password
//! that changes on disk is picked up when the gateway restarts or reloads
//! its config (every reload builds the sites anew).

use std::{fmt, io, path::PathBuf};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use http::HeaderValue;
use thiserror::Error;

use crate::config::Credentials;

/// A password or token. Debug and Display print `***`; the value is
/// reachable only through [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for building an `Authorization` header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// All internal faults (configuration or the secret's source); none is
/// helped by a retry.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CredentialsError {
    #[error("credentials for `{username}` name neither password_file nor password_env")]
    NoPasswordSource { username: String },
    #[error("credentials for `{username}` name both password_file and password_env; keep one")]
    BothPasswordSources { username: String },
    #[error(
        "cannot read the password file {path} (check that it exists and the gateway may read it)"
    )]
    ReadFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the password file {path} is not UTF-8 text")]
    FileNotUtf8 { path: PathBuf },
    #[error("the password file {path} is empty")]
    EmptyFile { path: PathBuf },
    /// The rule of the site CA's key (`tls/files.rs`): a secret file the
    /// group or others may read or write is refused, not used.
    #[error(
        "the password file {path} is open to group or others (mode {mode:04o}): \
         `chmod 600` it, owned by the user the gateway runs as"
    )]
    FilePermissions { path: PathBuf, mode: u32 },
    #[error("the environment variable {var} (password_env) is not set")]
    EnvMissing { var: String },
    #[error("the environment variable {var} (password_env) is not UTF-8 text")]
    EnvNotUnicode { var: String },
    #[error("the environment variable {var} (password_env) is empty")]
    EnvEmpty { var: String },
    /// RFC 7617 section 2: the user-id cannot contain a colon.
    #[error("username `{username}` contains `:`, which HTTP Basic authentication cannot carry")]
    UsernameHasColon { username: String },
}

/// A site's username and password, with the Basic `Authorization` value
/// built once.
#[derive(Clone)]
pub struct UpstreamCredentials {
    username: String,
    password: Secret,
    basic: HeaderValue,
}

impl fmt::Debug for UpstreamCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamCredentials")
            .field("username", &self.username)
            .field("password", &self.password)
            .finish_non_exhaustive()
    }
}

impl UpstreamCredentials {
    /// Reads the password named by the site's credentials.
    pub fn load(config: &Credentials) -> Result<Self, CredentialsError> {
        let username = config.username.clone();
        if username.contains(':') {
            return Err(CredentialsError::UsernameHasColon { username });
        }
        let password = match (&config.password_file, &config.password_env) {
            (Some(path), None) => read_file(path)?,
            (None, Some(var)) => read_env(var)?,
            (Some(_), Some(_)) => return Err(CredentialsError::BothPasswordSources { username }),
            (None, None) => return Err(CredentialsError::NoPasswordSource { username }),
        };
        Ok(Self::new(username, password))
    }

    /// Credentials from values already in memory.
    pub fn new(username: impl Into<String>, password: Secret) -> Self {
        let username = username.into();
        let encoded = STANDARD.encode(format!("{username}:{}", password.expose()));
        // Base64 output is always a valid header value; the fallback only
        // keeps this free of panics.
        let mut basic = HeaderValue::from_str(&format!("Basic {encoded}"))
            .unwrap_or_else(|_| HeaderValue::from_static("Basic"));
        basic.set_sensitive(true);
        Self {
            username,
            password,
            basic,
        }
    }

    pub fn username(&self) -> &str {
        &self.username
    }

    pub fn password(&self) -> &Secret {
        &self.password
    }

    /// `Basic base64(username:password)`, marked sensitive (hyper's Debug
    /// prints `Sensitive`, HTTP/2 never indexes it).
    pub fn basic_header(&self) -> &HeaderValue {
        &self.basic
    }
}

/// Reads a password file that only its owner may read or write (the
/// upstream proxy's `password_file`), with [`read_file`]'s rules.
pub fn read_password_file(path: &std::path::Path) -> Result<Secret, CredentialsError> {
    use std::{io::Read as _, os::unix::fs::PermissionsExt as _};
    let read_err = |source| CredentialsError::ReadFile {
        path: path.to_owned(),
        source,
    };
    // The mode is checked on the file that is then read (one open), so a
    // file swapped in between cannot slip past the check.
    let mut file = std::fs::File::open(path).map_err(read_err)?;
    let mode = file.metadata().map_err(read_err)?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(CredentialsError::FilePermissions {
            path: path.to_owned(),
            mode: mode & 0o7777,
        });
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(read_err)?;
    password_from(path, bytes)
}

fn read_file(path: &std::path::Path) -> Result<Secret, CredentialsError> {
    let bytes = std::fs::read(path).map_err(|source| CredentialsError::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    password_from(path, bytes)
}

/// A password file's text without its one trailing newline; UTF-8, not
/// empty.
fn password_from(path: &std::path::Path, bytes: Vec<u8>) -> Result<Secret, CredentialsError> {
    let text = String::from_utf8(bytes).map_err(|_| CredentialsError::FileNotUtf8 {
        path: path.to_owned(),
    })?;
    let password = trim_one_newline(&text);
    if password.is_empty() {
        return Err(CredentialsError::EmptyFile {
            path: path.to_owned(),
        });
    }
    Ok(Secret::new(password))
}

fn read_env(var: &str) -> Result<Secret, CredentialsError> {
    let value = std::env::var_os(var).ok_or_else(|| CredentialsError::EnvMissing {
        var: var.to_owned(),
    })?;
    let value = value
        .into_string()
        .map_err(|_| CredentialsError::EnvNotUnicode {
            var: var.to_owned(),
        })?;
    if value.is_empty() {
        return Err(CredentialsError::EnvEmpty {
            var: var.to_owned(),
        });
    }
    Ok(Secret::new(value))
}

/// Drops one trailing `\n` (or `\r\n`), as editors and `echo` add; any
/// other whitespace belongs to the password.
fn trim_one_newline(text: &str) -> &str {
    text.strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(text)
}

#[cfg(test)]
#[expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]
mod tests {
    use super::*;

    fn creds(file: Option<PathBuf>, env: Option<&str>) -> Credentials {
        Credentials {
            username: "puller".into(),
            password_file: file,
            password_env: env.map(str::to_owned),
        }
    }

    #[test]
    fn secret_prints_stars() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn file_trims_exactly_one_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret \n\n").unwrap();
        let c = UpstreamCredentials::load(&creds(Some(path.clone()), None)).unwrap();
        assert_eq!(c.password().expose(), "s3cret \n");
        std::fs::write(&path, "s3cret\r\n").unwrap();
        let c = UpstreamCredentials::load(&creds(Some(path), None)).unwrap();
        assert_eq!(c.password().expose(), "s3cret");
        assert_eq!(c.username(), "puller");
        let debug = format!("{c:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(!format!("{:?}", c.basic_header()).contains("cHVsbGVy"));
    }

    #[test]
    fn file_errors_name_the_file_not_the_content() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let e = UpstreamCredentials::load(&creds(Some(missing.clone()), None)).unwrap_err();
        assert!(matches!(e, CredentialsError::ReadFile { .. }));
        assert!(e.to_string().contains(&*missing.to_string_lossy()), "{e}");

        let bad = dir.path().join("bad");
        std::fs::write(&bad, b"topsecret\xff").unwrap();
        let e = UpstreamCredentials::load(&creds(Some(bad.clone()), None)).unwrap_err();
        let text = format!("{e} {e:?}");
        assert!(
            text.contains("bad") && !text.contains("topsecret"),
            "{text}"
        );

        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let e = UpstreamCredentials::load(&creds(Some(empty), None)).unwrap_err();
        assert!(matches!(e, CredentialsError::EmptyFile { .. }), "{e}");
    }

    #[test]
    fn a_private_password_file_must_be_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.password");
        std::fs::write(&path, "s3cret\n").unwrap();
        for mode in [0o644, 0o640, 0o604, 0o620] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = read_password_file(&path).unwrap_err();
            let text = e.to_string();
            assert!(
                matches!(e, CredentialsError::FilePermissions { .. })
                    && text.contains(&format!("{mode:04o}"))
                    && text.contains("chmod 600")
                    && !text.contains("s3cret"),
                "{text}"
            );
        }
        for mode in [0o600, 0o400] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(read_password_file(&path).unwrap().expose(), "s3cret");
        }
        let e = read_password_file(&dir.path().join("missing")).unwrap_err();
        assert!(matches!(e, CredentialsError::ReadFile { .. }), "{e}");
    }

    #[test]
    fn env_source() {
        let e = UpstreamCredentials::load(&creds(None, Some("GATEWAY_TEST_SURELY_UNSET_7f3a")))
            .unwrap_err();
        assert!(
            e.to_string().contains("GATEWAY_TEST_SURELY_UNSET_7f3a"),
            "{e}"
        );
        // Setting a variable is unsafe in edition 2024 (other threads may
        // read the environment); PATH is always set.
        let c = UpstreamCredentials::load(&creds(None, Some("PATH"))).unwrap();
        assert_eq!(
            c.password().expose(),
            std::env::var("PATH").unwrap().as_str()
        );
    }

    #[test]
    fn source_and_username_checks() {
        let e = UpstreamCredentials::load(&creds(None, None)).unwrap_err();
        assert!(matches!(e, CredentialsError::NoPasswordSource { .. }));
        let e = UpstreamCredentials::load(&creds(Some("/x".into()), Some("PATH"))).unwrap_err();
        assert!(matches!(e, CredentialsError::BothPasswordSources { .. }));
        let mut c = creds(None, Some("PATH"));
        c.username = "a:b".into();
        let e = UpstreamCredentials::load(&c).unwrap_err();
        assert!(matches!(e, CredentialsError::UsernameHasColon { .. }));
    }

    #[test]
    fn basic_header_encodes_user_and_password() {
        let c = UpstreamCredentials::new("puller", Secret::new("hunter2"));
        let expected = format!("Basic {}", STANDARD.encode("puller:hunter2"));
        assert_eq!(c.basic_header().to_str().unwrap(), expected);
        assert!(c.basic_header().is_sensitive());
    }
}
