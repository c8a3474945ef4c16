//! The YAML document tree the loader works on between parsing and deserializing.
//!
//! We keep our own tree rather than a YAML crate's `Value` because every step of the pipeline
//! needs something a generic value loses: merging `extends` chains must remember which file set
//! each key (errors name that file), substitution must know whether a scalar was quoted (a plain
//! `${PORT}` becomes the number it expands to), and every error wants a line and column. Scalars
//! stay as source text and are typed only when serde asks for a type, so `password: 12345` is a
//! string and `port: 15002` a number, as a reader of the YAML would expect.
//!
//! One module per step: `parse` builds the tree from YAML events, `merge` overlays an `extends`
//! chain, `path` names keys ([`KeyPath`]) and finds where they were written, and `de`
//! deserializes a typed config from the tree.

mod de;
mod merge;
mod parse;
mod path;

pub use path::{KeyPath, PathSegment};

pub(crate) use de::NodeDeserializer;
pub(crate) use merge::merge;
pub(crate) use parse::parse;

/// Index of a file in the chain of files being loaded (0 = the file that was asked for).
pub(crate) type FileId = usize;

/// Where a node was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Origin {
    pub(crate) file: FileId,
    /// 1-based.
    pub(crate) line: usize,
    /// 1-based.
    pub(crate) column: usize,
}

#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub(crate) value: Value,
    pub(crate) origin: Origin,
}

#[derive(Debug, Clone)]
pub(crate) enum Value {
    Scalar(Scalar),
    Seq(Vec<Node>),
    /// Entries in source order; keys are unique.
    Map(Vec<Entry>),
}

#[derive(Debug, Clone)]
pub(crate) struct Scalar {
    pub(crate) text: String,
    /// Plain (unquoted, untagged) scalars are typed by their text (`3` is a number, `true` a
    /// boolean, `~` null); quoted and block scalars are always strings.
    pub(crate) plain: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) key: Scalar,
    pub(crate) key_origin: Origin,
    pub(crate) value: Node,
}

impl Node {
    pub(crate) fn empty_map(origin: Origin) -> Self {
        Self {
            value: Value::Map(Vec::new()),
            origin,
        }
    }

    /// Whether this is a plain scalar YAML reads as null (`~`, `null`, or nothing at all).
    pub(crate) fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar(s) if s.is_null())
    }

    pub(crate) fn kind_name(&self) -> &'static str {
        match &self.value {
            Value::Scalar(s) if s.is_null() => "null",
            Value::Scalar(_) => "a scalar",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// Removes and returns a top-level entry.
    pub(crate) fn take_entry(&mut self, key: &str) -> Option<Entry> {
        let Value::Map(entries) = &mut self.value else {
            return None;
        };
        let index = entries.iter().position(|e| e.key.text == key)?;
        Some(entries.remove(index))
    }
}

impl Scalar {
    pub(crate) fn is_null(&self) -> bool {
        self.plain && matches!(self.text.as_str(), "" | "~" | "null" | "Null" | "NULL")
    }
}
