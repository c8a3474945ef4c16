//! Regex rules (backend namespaces, replication rules, tag types), compiled while the config is
//! read so a bad pattern is reported with its file and key instead of at the first request.

use std::fmt;

use regex::Regex;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A compiled regex that remembers its source. Matching is unanchored, as in Kraken: `library/.*`
/// also matches `mirror/library/x`; write `^library/` to anchor it.
#[derive(Clone)]
pub struct Pattern {
    regex: Regex,
}

impl Pattern {
    pub fn new(source: &str) -> Result<Self, regex::Error> {
        Regex::new(source).map(|regex| Self { regex })
    }

    /// A pattern matching everything (`.*`).
    pub fn any() -> Self {
        Self::new(".*").unwrap_or_else(|_| unreachable!("`.*` is a valid regex"))
    }

    pub fn is_match(&self, text: &str) -> bool {
        self.regex.is_match(text)
    }

    pub fn as_str(&self) -> &str {
        self.regex.as_str()
    }

    pub fn regex(&self) -> &Regex {
        &self.regex
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Pattern {}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", self.as_str())
    }
}

impl Serialize for Pattern {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let source = String::deserialize(deserializer)?;
        Self::new(&source).map_err(|error| {
            // The regex crate's message is multi-line with a caret under the problem; keep it,
            // it is the most precise description available.
            serde::de::Error::custom(format_args!(
                "invalid regular expression `{source}` (expected regex syntax, e.g. `library/.*`): {error}"
            ))
        })
    }
}
