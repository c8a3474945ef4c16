//! Secrets: passwords and keys given inline or, preferably, through a `*_file` path.
//!
//! A [`Secret`] never prints its value: `Debug` and `Serialize` show `<redacted>`, so logging a
//! config or printing it with `kraken config check` cannot leak one.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::validate::ValidationError;

/// What `Debug` and `Serialize` print instead of a secret.
pub const REDACTED: &str = "<redacted>";

/// A secret value. There is deliberately no `Display`: use [`Secret::expose`] at the one place
/// the value is handed to a client library.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Reads a secret file. One trailing newline (`\n` or `\r\n`) is dropped, since editors and
    /// `echo` add one and it is never part of a password.
    pub fn read_file(path: &Path) -> Result<Self, SecretError> {
        let mut value = std::fs::read_to_string(path).map_err(|source| SecretError::Read {
            path: path.to_owned(),
            source,
        })?;
        if value.ends_with('\n') {
            value.pop();
            if value.ends_with('\r') {
                value.pop();
            }
        }
        Ok(Self(value))
    }

    /// The secret from an inline value or a file, whichever is set (validation has made sure at
    /// most one is); `None` when neither is.
    pub fn resolve(
        inline: Option<&Secret>,
        file: Option<&Path>,
    ) -> Result<Option<Self>, SecretError> {
        match (inline, file) {
            (Some(secret), _) => Ok(Some(secret.clone())),
            (None, Some(path)) => Self::read_file(path).map(Some),
            (None, None) => Ok(None),
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self)
    }
}

/// Why a secret could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read secret file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Checks that at most one of `key` and `key_file` is set; with `required`, exactly one.
pub(crate) fn check_secret_pair(
    key: &str,
    inline: Option<&Secret>,
    file: Option<&PathBuf>,
    required: bool,
) -> Result<(), ValidationError> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(ValidationError::at(
            key,
            format!("set either `{key}` or `{key}_file`, not both"),
        )),
        (None, Some(path)) if path.as_os_str().is_empty() => Err(ValidationError::at(
            &format!("{key}_file"),
            "must be a file path",
        )),
        (None, None) if required => Err(ValidationError::at(
            key,
            format!("missing: set `{key}_file` (a path to a file holding it) or `{key}`"),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_the_value() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), REDACTED);
        assert_eq!(serde_json::to_string(&secret).unwrap(), "\"<redacted>\"");
        assert_eq!(secret.expose(), "hunter2");
    }

    #[test]
    fn reads_files_dropping_one_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret\r\n").unwrap();
        assert_eq!(Secret::read_file(&path).unwrap().expose(), "s3cret");
        std::fs::write(&path, "two\n\n").unwrap();
        assert_eq!(Secret::read_file(&path).unwrap().expose(), "two\n");
        let inline = Secret::new("inline");
        assert_eq!(Secret::resolve(Some(&inline), None).unwrap(), Some(inline));
        assert_eq!(
            Secret::resolve(None, Some(&path))
                .unwrap()
                .unwrap()
                .expose(),
            "two\n"
        );
        assert!(Secret::resolve(None, None).unwrap().is_none());
        let error = Secret::resolve(None, Some(&dir.path().join("missing"))).unwrap_err();
        assert!(error.to_string().contains("missing"));
    }
}
