//! Repository names, tags and references, following the distribution grammar:
//!
//! - repository: path components of `[a-z0-9]+` joined by `.`, `_`, `__` or runs of `-`,
//!   separated by `/`, at most 255 characters (this is [`Namespace`], the same type that routes
//!   blobs to storage backends);
//! - tag: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`;
//! - reference (the last path segment of `/v2/<name>/manifests/<reference>`): a tag or a
//!   digest (`sha256:<64 hex>`).

use std::fmt;
use std::str::FromStr;

use kraken_core::{Digest, DigestError, Namespace, NamespaceError};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::RegistryError;

/// Parses a repository name. The error names the offending character or separator.
pub fn parse_repository(name: &str) -> Result<Namespace, NameError> {
    name.parse().map_err(NameError)
}

/// A repository name that does not follow the grammar (maps to `NAME_INVALID`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid repository name: {0}")]
pub struct NameError(#[source] pub NamespaceError);

impl From<NameError> for RegistryError {
    fn from(error: NameError) -> Self {
        RegistryError::name_invalid(error.to_string())
    }
}

/// A valid tag.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

/// Why a string is not a tag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TagError {
    #[error("tag is empty")]
    Empty,
    #[error("tag is {len} characters long; the limit is {max}", max = Tag::MAX_LEN)]
    TooLong { len: usize },
    #[error(
        "tag {input:?} has {found:?} at position {position}: a tag is letters, digits, '_', '.' \
         and '-', and does not start with '.' or '-'"
    )]
    InvalidCharacter {
        input: String,
        found: char,
        position: usize,
    },
}

impl Tag {
    pub const MAX_LEN: usize = 128;

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Tag {
    type Err = TagError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        if input.is_empty() {
            return Err(TagError::Empty);
        }
        if input.len() > Self::MAX_LEN {
            return Err(TagError::TooLong { len: input.len() });
        }
        for (position, found) in input.char_indices() {
            let allowed = found.is_ascii_alphanumeric()
                || found == '_'
                || (position > 0 && matches!(found, '.' | '-'));
            if !allowed {
                return Err(TagError::InvalidCharacter {
                    input: clip(input),
                    found,
                    position,
                });
            }
        }
        Ok(Self(input.to_owned()))
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tag({:?})", self.0)
    }
}

impl AsRef<str> for Tag {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// What a manifest is addressed by: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

/// Why a path segment is neither a tag nor a digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// Looks like a digest (has a `:`) but is not a valid one.
    #[error("invalid digest reference: {0}")]
    Digest(#[source] DigestError),
    #[error("invalid tag reference: {0}")]
    Tag(#[source] TagError),
}

impl From<ReferenceError> for RegistryError {
    fn from(error: ReferenceError) -> Self {
        match error {
            ReferenceError::Digest(_) => RegistryError::digest_invalid(error.to_string()),
            ReferenceError::Tag(_) => RegistryError::manifest_invalid(error.to_string()),
        }
    }
}

impl Reference {
    pub fn as_tag(&self) -> Option<&Tag> {
        match self {
            Self::Tag(tag) => Some(tag),
            Self::Digest(_) => None,
        }
    }

    pub fn as_digest(&self) -> Option<&Digest> {
        match self {
            Self::Digest(digest) => Some(digest),
            Self::Tag(_) => None,
        }
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        // A tag cannot contain ':', a digest always does.
        if input.contains(':') {
            input
                .parse()
                .map(Self::Digest)
                .map_err(ReferenceError::Digest)
        } else {
            input.parse().map(Self::Tag).map_err(ReferenceError::Tag)
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tag(tag) => tag.fmt(f),
            Self::Digest(digest) => digest.fmt(f),
        }
    }
}

/// A tag with its repository: `library/ubuntu:22.04`, the key build-index stores.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaggedName {
    pub repository: Namespace,
    pub tag: Tag,
}

/// Why a string is not `repository:tag`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaggedNameError {
    #[error("{0:?} has no ':' between repository and tag")]
    MissingTag(String),
    #[error(transparent)]
    Repository(#[from] NameError),
    #[error(transparent)]
    Tag(#[from] TagError),
}

impl TaggedName {
    pub fn new(repository: Namespace, tag: Tag) -> Self {
        Self { repository, tag }
    }
}

impl FromStr for TaggedName {
    type Err = TaggedNameError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        // Neither part may contain ':', so the split is unambiguous (no registry host here).
        let (repository, tag) = input
            .rsplit_once(':')
            .ok_or_else(|| TaggedNameError::MissingTag(clip(input)))?;
        Ok(Self {
            repository: parse_repository(repository)?,
            tag: tag.parse()?,
        })
    }
}

impl fmt::Display for TaggedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.repository, self.tag)
    }
}

impl Serialize for TaggedName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TaggedName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Shortens untrusted input echoed in an error message.
fn clip(input: &str) -> String {
    const MAX: usize = 80;
    if input.len() <= MAX {
        return input.to_owned();
    }
    let mut end = MAX;
    while !input.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &input[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;

    #[test]
    fn tags_follow_the_grammar() {
        for ok in ["latest", "v1.2.3", "_x", "A-b_c.d", &"a".repeat(128)] {
            assert_eq!(ok.parse::<Tag>().unwrap().as_str(), ok);
        }
        assert_eq!("".parse::<Tag>(), Err(TagError::Empty));
        assert!(matches!(
            "a".repeat(129).parse::<Tag>(),
            Err(TagError::TooLong { len: 129 })
        ));
        for (bad, found, position) in [
            (".x", '.', 0),
            ("-x", '-', 0),
            ("a/b", '/', 1),
            ("a:b", ':', 1),
        ] {
            assert!(
                matches!(bad.parse::<Tag>(), Err(TagError::InvalidCharacter { found: f, position: p, .. }) if f == found && p == position),
                "{bad}"
            );
        }
    }

    #[test]
    fn references_are_tags_or_digests() {
        let digest = Digest::of(b"x");
        assert_eq!(
            digest.to_string().parse::<Reference>().unwrap(),
            Reference::Digest(digest)
        );
        let tag: Reference = "latest".parse().unwrap();
        assert_eq!(tag.as_tag().map(Tag::as_str), Some("latest"));
        assert_eq!(tag.to_string(), "latest");
        let bad_digest = "sha256:abc".parse::<Reference>().unwrap_err();
        assert_eq!(
            RegistryError::from(bad_digest).code(),
            ErrorCode::DigestInvalid
        );
        let bad_tag = ".hidden".parse::<Reference>().unwrap_err();
        assert_eq!(
            RegistryError::from(bad_tag).code(),
            ErrorCode::ManifestInvalid
        );
    }

    #[test]
    fn tagged_names_split_at_the_last_colon() {
        let name: TaggedName = "library/ubuntu:22.04".parse().unwrap();
        assert_eq!(name.repository.as_str(), "library/ubuntu");
        assert_eq!(name.tag.as_str(), "22.04");
        assert_eq!(name.to_string(), "library/ubuntu:22.04");
        assert!(matches!(
            "library/ubuntu".parse::<TaggedName>(),
            Err(TaggedNameError::MissingTag(_))
        ));
        assert!(matches!(
            "Library/ubuntu:1".parse::<TaggedName>(),
            Err(TaggedNameError::Repository(_))
        ));
        assert!(matches!(
            "a:b:c".parse::<TaggedName>(),
            Err(TaggedNameError::Repository(_))
        ));
        let json = serde_json::to_string(&name).unwrap();
        assert_eq!(serde_json::from_str::<TaggedName>(&json).unwrap(), name);
    }

    #[test]
    fn bad_repositories_are_name_invalid() {
        let error = parse_repository("UPPER/case").unwrap_err();
        let registry = RegistryError::from(error);
        assert_eq!(registry.code(), ErrorCode::NameInvalid);
        assert!(registry.message().contains("'U'"), "{}", registry.message());
    }
}
