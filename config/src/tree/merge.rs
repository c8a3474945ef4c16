//! Overlaying the files of an `extends` chain.

use super::{Node, Value};

/// Overlays `over` (the more derived file) on `base`: mappings merge key by key, recursively;
/// anything else in `over` (scalar, list, or a different kind) replaces what `base` had.
pub(crate) fn merge(base: Node, over: Node) -> Node {
    match (base.value, over.value) {
        (Value::Map(mut base_entries), Value::Map(over_entries)) => {
            for entry in over_entries {
                match base_entries
                    .iter_mut()
                    .find(|e| e.key.text == entry.key.text)
                {
                    Some(existing) => {
                        let placeholder = Node::empty_map(entry.value.origin);
                        let old = std::mem::replace(&mut existing.value, placeholder);
                        existing.value = merge(old, entry.value);
                        // The derived file is the one that set this key, for error messages.
                        existing.key_origin = entry.key_origin;
                    }
                    None => base_entries.push(entry),
                }
            }
            Node {
                value: Value::Map(base_entries),
                origin: over.origin,
            }
        }
        (_, value) => Node {
            value,
            origin: over.origin,
        },
    }
}
