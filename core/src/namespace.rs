//! Namespaces: the repository a blob or tag belongs to (`library/ubuntu`). They route blobs to
//! storage backends and scope tags, so a malformed one must never reach a backend.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::clip;

/// A validated repository name following the OCI distribution grammar:
/// path components of lowercase alphanumerics joined by `.`, `_`, `__` or runs of `-`,
/// separated by `/`, at most 255 characters in all.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Namespace(String);

/// Why a string is not a valid namespace.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NamespaceError {
    #[error("namespace is empty")]
    Empty,
    #[error("namespace {input:?} is {len} characters long; the limit is {max}", max = Namespace::MAX_LEN)]
    TooLong { input: String, len: usize },
    #[error("namespace {input:?} has an empty path component (leading, trailing or double '/')")]
    EmptyComponent { input: String },
    #[error(
        "namespace {input:?} has {found:?} at position {position}: only lowercase letters, digits \
         and the separators '.', '_', '__', '-' and '/' are allowed"
    )]
    InvalidCharacter {
        input: String,
        found: char,
        position: usize,
    },
    #[error(
        "namespace {input:?} has a misplaced separator at position {position}: each path \
         component must start and end with a letter or digit, and separators are '.', '_', '__' \
         or a run of '-'"
    )]
    MisplacedSeparator { input: String, position: usize },
}

impl Namespace {
    /// The OCI distribution spec's practical limit on a repository name.
    pub const MAX_LEN: usize = 255;

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Namespace {
    type Err = NamespaceError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        if input.is_empty() {
            return Err(NamespaceError::Empty);
        }
        if input.len() > Self::MAX_LEN {
            return Err(NamespaceError::TooLong {
                input: clip(input),
                len: input.len(),
            });
        }
        let mut offset = 0;
        for component in input.split('/') {
            validate_component(input, component, offset)?;
            offset += component.len() + 1;
        }
        Ok(Self(input.to_owned()))
    }
}

fn validate_component(input: &str, component: &str, offset: usize) -> Result<(), NamespaceError> {
    let bytes = component.as_bytes();
    let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
        return Err(NamespaceError::EmptyComponent { input: clip(input) });
    };
    if let Some((index, found)) = component
        .char_indices()
        .find(|(_, c)| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '-'))
    {
        return Err(NamespaceError::InvalidCharacter {
            input: clip(input),
            found,
            position: offset + index,
        });
    }
    let misplaced = |index: usize| NamespaceError::MisplacedSeparator {
        input: clip(input),
        position: offset + index,
    };
    if !first.is_ascii_alphanumeric() {
        return Err(misplaced(0));
    }
    if !last.is_ascii_alphanumeric() {
        return Err(misplaced(bytes.len() - 1));
    }
    // Walk separator runs: allowed runs are ".", "_", "__" or any number of "-".
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index].is_ascii_alphanumeric() {
            index += 1;
            continue;
        }
        let start = index;
        while index < bytes.len() && !bytes[index].is_ascii_alphanumeric() {
            index += 1;
        }
        let run = &component[start..index];
        let allowed = matches!(run, "." | "_" | "__") || run.bytes().all(|b| b == b'-');
        if !allowed {
            return Err(misplaced(start));
        }
    }
    Ok(())
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Namespace({:?})", self.0)
    }
}

impl AsRef<str> for Namespace {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for Namespace {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Namespace {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_registry_style_names() {
        for ok in [
            "ubuntu",
            "library/ubuntu",
            "a/b/c",
            "my-org/my--app",
            "team_x/app.v2",
            "a__b",
            "0/1",
        ] {
            assert_eq!(ok.parse::<Namespace>().unwrap().as_str(), ok, "{ok}");
        }
    }

    #[test]
    fn rejects_bad_names_naming_the_problem() {
        assert_eq!("".parse::<Namespace>(), Err(NamespaceError::Empty));
        assert!(matches!(
            "Library/ubuntu".parse::<Namespace>(),
            Err(NamespaceError::InvalidCharacter {
                found: 'L',
                position: 0,
                ..
            })
        ));
        assert!(matches!(
            "library//ubuntu".parse::<Namespace>(),
            Err(NamespaceError::EmptyComponent { .. })
        ));
        assert!(matches!(
            "/ubuntu".parse::<Namespace>(),
            Err(NamespaceError::EmptyComponent { .. })
        ));
        assert!(matches!(
            "lib/-ubuntu".parse::<Namespace>(),
            Err(NamespaceError::MisplacedSeparator { position: 4, .. })
        ));
        assert!(matches!(
            "a..b".parse::<Namespace>(),
            Err(NamespaceError::MisplacedSeparator { position: 1, .. })
        ));
        assert!(matches!(
            "a___b".parse::<Namespace>(),
            Err(NamespaceError::MisplacedSeparator { .. })
        ));
        assert!(matches!(
            "a:b".parse::<Namespace>(),
            Err(NamespaceError::InvalidCharacter { found: ':', .. })
        ));
        let long = "a".repeat(256);
        assert!(matches!(
            long.parse::<Namespace>(),
            Err(NamespaceError::TooLong { len: 256, .. })
        ));
    }
}
