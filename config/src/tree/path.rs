//! Key paths (`scheduler.conn.bandwidth.enable`, `backends[1].namespace`) and finding where the
//! node at one was written.

use std::fmt;

use super::{Node, Origin, Value};

/// One step of a [`KeyPath`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathSegment {
    /// A mapping key (or an enum variant written as a single-key mapping).
    Key(String),
    /// A list index, 0-based.
    Index(usize),
}

/// The dotted path of a key in a config file, e.g. `scheduler.conn.bandwidth.enable` or
/// `backends[1].namespace`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct KeyPath(Vec<PathSegment>);

impl KeyPath {
    /// The top level of the document.
    pub fn root() -> Self {
        Self(Vec::new())
    }

    /// Parses the display form (`a.b[2].c`); keys containing `.` or `[` cannot be written this
    /// way, which is fine for the struct field names it is used with.
    pub fn parse(text: &str) -> Self {
        let mut segments = Vec::new();
        for part in text.split('.').filter(|p| !p.is_empty()) {
            let mut rest = part;
            if let Some(bracket) = rest.find('[') {
                if bracket > 0 {
                    segments.push(PathSegment::Key(rest[..bracket].to_owned()));
                }
                rest = &rest[bracket..];
                while let Some(inner) = rest.strip_prefix('[') {
                    let Some(end) = inner.find(']') else { break };
                    match inner[..end].parse() {
                        Ok(index) => segments.push(PathSegment::Index(index)),
                        Err(_) => segments.push(PathSegment::Key(inner[..end].to_owned())),
                    }
                    rest = &inner[end + 1..];
                }
            } else {
                segments.push(PathSegment::Key(rest.to_owned()));
            }
        }
        Self(segments)
    }

    pub fn segments(&self) -> &[PathSegment] {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// This path with `key` appended.
    pub fn key(&self, key: impl Into<String>) -> Self {
        let mut next = self.clone();
        next.0.push(PathSegment::Key(key.into()));
        next
    }

    /// This path with a list index appended.
    pub fn index(&self, index: usize) -> Self {
        let mut next = self.clone();
        next.0.push(PathSegment::Index(index));
        next
    }

    pub(crate) fn prepend(&mut self, segment: PathSegment) {
        self.0.insert(0, segment);
    }

    pub(crate) fn from_serde(path: &serde_path_to_error::Path) -> Self {
        use serde_path_to_error::Segment;
        Self(
            path.iter()
                .filter_map(|segment| match segment {
                    Segment::Seq { index } => Some(PathSegment::Index(*index)),
                    Segment::Map { key } => Some(PathSegment::Key(key.clone())),
                    Segment::Enum { variant } => Some(PathSegment::Key(variant.clone())),
                    Segment::Unknown => None,
                })
                .collect(),
        )
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("<top level>");
        }
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                PathSegment::Key(key) if i == 0 => f.write_str(key)?,
                PathSegment::Key(key) => write!(f, ".{key}")?,
                PathSegment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

impl Node {
    /// Where the value at `path` was written; if the path does not exist (the value is a
    /// default), where its nearest written ancestor was, so the error still points at the
    /// section and the file that holds it.
    pub(crate) fn locate(&self, path: &KeyPath) -> Origin {
        let mut node = self;
        let mut at = self.origin;
        for segment in path.segments() {
            let next = match (&node.value, segment) {
                (Value::Map(entries), PathSegment::Key(key)) => {
                    entries.iter().find(|e| &e.key.text == key).map(|e| {
                        // A null value (`key:` with nothing after it) has no useful position
                        // of its own; the key's is the one a reader looks for.
                        if e.value.is_null() {
                            (&e.value, e.key_origin)
                        } else {
                            (&e.value, e.value.origin)
                        }
                    })
                }
                (Value::Seq(items), PathSegment::Index(index)) => {
                    items.get(*index).map(|item| (item, item.origin))
                }
                _ => None,
            };
            match next {
                Some((child, origin)) => {
                    node = child;
                    at = origin;
                }
                None => break,
            }
        }
        at
    }

    /// Where the key at the end of `path` was written (for unknown-key errors, which are about
    /// the key, not its value). Falls back to [`Node::locate`].
    pub(crate) fn locate_key(&self, path: &KeyPath) -> Origin {
        let segments = path.segments();
        if let Some((PathSegment::Key(last), parent)) = segments.split_last() {
            let parent_path = KeyPath(parent.to_vec());
            if let Some(Value::Map(entries)) = self.get(&parent_path).map(|n| &n.value)
                && let Some(entry) = entries.iter().find(|e| &e.key.text == last)
            {
                return entry.key_origin;
            }
        }
        self.locate(path)
    }

    fn get(&self, path: &KeyPath) -> Option<&Node> {
        let mut node = self;
        for segment in path.segments() {
            node = match (&node.value, segment) {
                (Value::Map(entries), PathSegment::Key(key)) => {
                    &entries.iter().find(|e| &e.key.text == key)?.value
                }
                (Value::Seq(items), PathSegment::Index(index)) => items.get(*index)?,
                _ => return None,
            };
        }
        Some(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_paths_round_trip_through_display() {
        for text in [
            "a",
            "a.b",
            "backends[1].namespace",
            "remotes.x[0]",
            "a[0][1].b",
        ] {
            assert_eq!(KeyPath::parse(text).to_string(), text);
        }
        assert_eq!(KeyPath::root().to_string(), "<top level>");
    }
}
