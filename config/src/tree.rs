//! The YAML document tree the loader works on between parsing and deserializing.
//!
//! We keep our own tree rather than a YAML crate's `Value` because every step of the pipeline
//! needs something a generic value loses: merging `extends` chains must remember which file set
//! each key (errors name that file), substitution must know whether a scalar was quoted (a plain
//! `${PORT}` becomes the number it expands to), and every error wants a line and column. Scalars
//! stay as source text and are typed only when serde asks for a type, so `password: 12345` is a
//! string and `port: 15002` a number, as a reader of the YAML would expect.

use std::collections::HashMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, Unexpected, Visitor};
use serde_saphyr::granit_parser::{Event, Options, Parser, ScalarStyle, Span};

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

impl Origin {
    fn from_span(file: FileId, span: &Span) -> Self {
        Self {
            file,
            line: span.start.line(),
            column: span.start.col() + 1,
        }
    }
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

/// A YAML syntax error, with the position the parser reported.
#[derive(Debug, Clone)]
pub(crate) struct SyntaxError {
    pub(crate) line: usize,
    pub(crate) column: usize,
    pub(crate) message: String,
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

// ---------------------------------------------------------------------------------------------
// Parsing

/// Parses one YAML document. `Ok(None)` for a file with no document (empty or comments only).
pub(crate) fn parse(text: &str, file: FileId) -> Result<Option<Node>, SyntaxError> {
    let mut options = Options::default();
    options.emit_comments = false;
    let mut builder = Builder {
        parser: Parser::new_from_str_with_options(text, options),
        file,
        anchors: HashMap::new(),
        last: Span::default(),
    };
    builder.document()
}

struct Builder<'a> {
    parser: Parser<'a, serde_saphyr::granit_parser::StrInput<'a>>,
    file: FileId,
    /// Anchored nodes by the parser's anchor id, cloned on every alias.
    anchors: HashMap<usize, Node>,
    /// Span of the last event, for "unexpected end" errors.
    last: Span,
}

impl<'a> Builder<'a> {
    fn error(&self, span: &Span, message: impl Into<String>) -> SyntaxError {
        SyntaxError {
            line: span.start.line(),
            column: span.start.col() + 1,
            message: message.into(),
        }
    }

    fn next(&mut self) -> Result<(Event<'a>, Span), SyntaxError> {
        loop {
            match self.parser.next() {
                None => return Err(self.error(&self.last, "unexpected end of input")),
                Some(Err(error)) => {
                    let mark = error.marker();
                    return Err(SyntaxError {
                        line: mark.line(),
                        column: mark.col() + 1,
                        message: error.info(),
                    });
                }
                Some(Ok((event, span))) => {
                    self.last = span;
                    // Presentation-only events carry no data.
                    if matches!(event, Event::Anchor(..) | Event::Comment(..)) {
                        continue;
                    }
                    return Ok((event, span));
                }
            }
        }
    }

    fn document(&mut self) -> Result<Option<Node>, SyntaxError> {
        let (event, span) = self.next()?;
        if !matches!(event, Event::StreamStart) {
            return Err(self.error(&span, "expected the start of the YAML stream"));
        }
        let (event, span) = self.next()?;
        match event {
            Event::StreamEnd => return Ok(None),
            Event::DocumentStart(..) => {}
            _ => return Err(self.error(&span, "expected a YAML document")),
        }
        let (event, span) = self.next()?;
        let root = self.node(event, span)?;
        let (event, span) = self.next()?;
        if !matches!(event, Event::DocumentEnd) {
            return Err(self.error(&span, "expected the end of the document"));
        }
        let (event, span) = self.next()?;
        match event {
            Event::StreamEnd => Ok(Some(root)),
            // A config file is one document; a second one would be silently ignored otherwise.
            _ => Err(self.error(&span, "a config file must contain a single YAML document")),
        }
    }

    fn check_tag(
        &self,
        span: &Span,
        tag: Option<&serde_saphyr::granit_parser::Tag>,
    ) -> Result<bool, SyntaxError> {
        let Some(tag) = tag else { return Ok(false) };
        match tag.core_suffix() {
            Some("str") => Ok(true),
            Some(_) => Ok(false),
            None => Err(self.error(
                span,
                format!(
                    "unsupported tag `{}{}`: only YAML core tags such as `!!str` are understood",
                    tag.original_handle(),
                    tag.suffix()
                ),
            )),
        }
    }

    fn node(&mut self, event: Event<'a>, span: Span) -> Result<Node, SyntaxError> {
        let origin = Origin::from_span(self.file, &span);
        let (node, anchor) = match event {
            Event::Scalar(text, style, anchor, tag) => {
                let forced_string = self.check_tag(&span, tag.as_deref())?;
                let plain = style == ScalarStyle::Plain && !forced_string;
                (
                    Node {
                        value: Value::Scalar(Scalar {
                            text: text.into_owned(),
                            plain,
                        }),
                        origin,
                    },
                    anchor,
                )
            }
            Event::SequenceStart(_, anchor, tag) => {
                self.check_tag(&span, tag.as_deref())?;
                let mut items = Vec::new();
                loop {
                    let (event, span) = self.next()?;
                    if matches!(event, Event::SequenceEnd) {
                        break;
                    }
                    items.push(self.node(event, span)?);
                }
                (
                    Node {
                        value: Value::Seq(items),
                        origin,
                    },
                    anchor,
                )
            }
            Event::MappingStart(_, anchor, tag) => {
                self.check_tag(&span, tag.as_deref())?;
                (
                    Node {
                        value: Value::Map(self.mapping()?),
                        origin,
                    },
                    anchor,
                )
            }
            Event::Alias(id) => {
                let node = self
                    .anchors
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| self.error(&span, "alias to an unknown anchor"))?;
                return Ok(node);
            }
            _ => return Err(self.error(&span, "unexpected YAML event")),
        };
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        Ok(node)
    }

    fn mapping(&mut self) -> Result<Vec<Entry>, SyntaxError> {
        let mut entries: Vec<Entry> = Vec::new();
        // Entries from `<<: *anchor` merge keys; explicit keys win whatever their position.
        let mut merged: Vec<Entry> = Vec::new();
        loop {
            let (event, span) = self.next()?;
            if matches!(event, Event::MappingEnd) {
                break;
            }
            let key_node = self.node(event, span)?;
            let Value::Scalar(key) = key_node.value else {
                return Err(self.error(&span, "mapping keys must be scalars"));
            };
            let key_origin = key_node.origin;
            let (event, value_span) = self.next()?;
            let value = self.node(event, value_span)?;
            if key.plain && key.text == "<<" {
                self.merge_key(value, &value_span, &mut merged)?;
                continue;
            }
            if let Some(first) = entries.iter().find(|e| e.key.text == key.text) {
                return Err(self.error(
                    &span,
                    format!(
                        "duplicate key `{}` (first set at line {})",
                        key.text, first.key_origin.line
                    ),
                ));
            }
            entries.push(Entry {
                key,
                key_origin,
                value,
            });
        }
        for entry in merged {
            if !entries.iter().any(|e| e.key.text == entry.key.text) {
                entries.push(entry);
            }
        }
        Ok(entries)
    }

    fn merge_key(
        &self,
        value: Node,
        span: &Span,
        merged: &mut Vec<Entry>,
    ) -> Result<(), SyntaxError> {
        let maps = match value.value {
            Value::Map(entries) => vec![entries],
            Value::Seq(items) => items
                .into_iter()
                .map(|item| match item.value {
                    Value::Map(entries) => Ok(entries),
                    _ => Err(self.error(span, "`<<` merges mappings only")),
                })
                .collect::<Result<_, _>>()?,
            Value::Scalar(_) => return Err(self.error(span, "`<<` merges mappings only")),
        };
        // In a list of merged maps the earlier ones take precedence.
        for entries in maps {
            for entry in entries {
                if !merged.iter().any(|e| e.key.text == entry.key.text) {
                    merged.push(entry);
                }
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Merging

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

// ---------------------------------------------------------------------------------------------
// Key paths

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

// ---------------------------------------------------------------------------------------------
// Deserializing

/// A deserialization error, with the position of the node it is about when known.
#[derive(Debug)]
pub(crate) struct DeError {
    pub(crate) message: String,
    pub(crate) origin: Option<Origin>,
    /// Set for unknown-key errors, which are located at the key rather than its value.
    pub(crate) about_key: bool,
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self {
            message: msg.to_string(),
            origin: None,
            about_key: false,
        }
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        let message = match expected {
            [] => format!("unknown field `{field}`, there are no fields"),
            [one] => format!("unknown field `{field}`, expected `{one}`"),
            many => format!(
                "unknown field `{field}`, expected one of {}",
                many.iter()
                    .map(|name| format!("`{name}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        Self {
            message,
            origin: None,
            about_key: true,
        }
    }
}

fn at<T>(origin: Origin, result: Result<T, DeError>) -> Result<T, DeError> {
    result.map_err(|mut error| {
        // The innermost node that saw the error knows best; outer nodes only fill a gap.
        if error.origin.is_none() {
            error.origin = Some(origin);
        }
        error
    })
}

/// A scalar typed by its text, per the YAML 1.2 core schema.
enum Resolved<'a> {
    Null,
    Bool(bool),
    Unsigned(u128),
    Signed(i128),
    Float(f64),
    Str(&'a str),
}

fn resolve(scalar: &Scalar) -> Resolved<'_> {
    let text = scalar.text.as_str();
    if !scalar.plain {
        return Resolved::Str(text);
    }
    if scalar.is_null() {
        return Resolved::Null;
    }
    match text {
        "true" | "True" | "TRUE" => return Resolved::Bool(true),
        "false" | "False" | "FALSE" => return Resolved::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Resolved::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Resolved::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Resolved::Float(f64::NAN),
        _ => {}
    }
    if let Some(value) = parse_int(text) {
        return value;
    }
    if looks_like_float(text)
        && let Ok(value) = text.parse::<f64>()
    {
        return Resolved::Float(value);
    }
    Resolved::Str(text)
}

fn parse_int(text: &str) -> Option<Resolved<'static>> {
    let (negative, unsigned) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let (radix, digits) = if let Some(hex) = unsigned.strip_prefix("0x") {
        (16, hex)
    } else if let Some(octal) = unsigned.strip_prefix("0o") {
        (8, octal)
    } else {
        (10, unsigned)
    };
    // `_` separators make large bit rates readable (`1_677_721_600`), as YAML 1.1 allowed.
    if digits.is_empty()
        || digits.starts_with('_')
        || digits.ends_with('_')
        || !digits.chars().all(|c| c == '_' || c.is_digit(radix))
    {
        return None;
    }
    let digits: String = digits.chars().filter(|c| *c != '_').collect();
    let magnitude = u128::from_str_radix(&digits, radix).ok()?;
    if negative {
        let value = 0i128.checked_sub_unsigned(magnitude)?;
        Some(Resolved::Signed(value))
    } else {
        Some(Resolved::Unsigned(magnitude))
    }
}

fn looks_like_float(text: &str) -> bool {
    let body = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(index) => (&body[..index], Some(&body[index + 1..])),
        None => (body, None),
    };
    let (whole, fraction) = match mantissa.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (mantissa, None),
    };
    let digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    let mantissa_ok = digits(whole)
        && fraction.is_none_or(digits)
        && (!whole.is_empty() || fraction.is_some_and(|f| !f.is_empty()));
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && digits(e)
    });
    mantissa_ok && exponent_ok && (fraction.is_some() || exponent.is_some())
}

fn visit_scalar<'de, V: Visitor<'de>>(
    scalar: &'de Scalar,
    visitor: V,
) -> Result<V::Value, DeError> {
    match resolve(scalar) {
        Resolved::Null => visitor.visit_unit(),
        Resolved::Bool(value) => visitor.visit_bool(value),
        Resolved::Unsigned(value) => match u64::try_from(value) {
            Ok(value) => visitor.visit_u64(value),
            Err(_) => visitor.visit_u128(value),
        },
        Resolved::Signed(value) => match i64::try_from(value) {
            Ok(value) => visitor.visit_i64(value),
            Err(_) => visitor.visit_i128(value),
        },
        Resolved::Float(value) => visitor.visit_f64(value),
        Resolved::Str(text) => visitor.visit_borrowed_str(text),
    }
}

fn unexpected(node: &Node) -> Unexpected<'_> {
    match &node.value {
        Value::Scalar(scalar) => match resolve(scalar) {
            Resolved::Null => Unexpected::Unit,
            Resolved::Bool(value) => Unexpected::Bool(value),
            Resolved::Unsigned(value) => {
                u64::try_from(value).map_or(Unexpected::Other("integer"), Unexpected::Unsigned)
            }
            Resolved::Signed(value) => {
                i64::try_from(value).map_or(Unexpected::Other("integer"), Unexpected::Signed)
            }
            Resolved::Float(value) => Unexpected::Float(value),
            Resolved::Str(text) => Unexpected::Str(text),
        },
        Value::Seq(_) => Unexpected::Seq,
        Value::Map(_) => Unexpected::Map,
    }
}

/// Deserializes a value from a [`Node`].
pub(crate) struct NodeDeserializer<'de> {
    node: &'de Node,
}

impl<'de> NodeDeserializer<'de> {
    pub(crate) fn new(node: &'de Node) -> Self {
        Self { node }
    }

    fn any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.value {
            Value::Scalar(scalar) => visit_scalar(scalar, visitor),
            Value::Seq(items) => visit_seq(items, visitor),
            Value::Map(entries) => visit_map(entries, visitor),
        }
    }
}

fn visit_seq<'de, V: Visitor<'de>>(items: &'de [Node], visitor: V) -> Result<V::Value, DeError> {
    let mut access = SeqAccess {
        items: items.iter(),
    };
    let value = visitor.visit_seq(&mut access)?;
    match access.items.len() {
        0 => Ok(value),
        left => Err(de::Error::invalid_length(
            items.len(),
            &format!("{} fewer elements", left).as_str(),
        )),
    }
}

fn visit_map<'de, V: Visitor<'de>>(entries: &'de [Entry], visitor: V) -> Result<V::Value, DeError> {
    visitor.visit_map(MapAccess {
        entries: entries.iter(),
        value: None,
    })
}

macro_rules! forward_to_any {
    ($($method:ident)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
                let origin = self.node.origin;
                at(origin, self.any(visitor))
            }
        )*
    };
}

impl<'de> de::Deserializer<'de> for NodeDeserializer<'de> {
    type Error = DeError;

    forward_to_any! {
        deserialize_any deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32
        deserialize_i64 deserialize_i128 deserialize_u8 deserialize_u16 deserialize_u32
        deserialize_u64 deserialize_u128 deserialize_f32 deserialize_f64 deserialize_bytes
        deserialize_byte_buf
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let origin = self.node.origin;
        let result = match &self.node.value {
            // Any non-null scalar reads as its text where a string is wanted, so `password:
            // 12345` or `version: 1.0` mean what they look like.
            Value::Scalar(scalar) if !scalar.is_null() => visitor.visit_borrowed_str(&scalar.text),
            _ => Err(de::Error::invalid_type(unexpected(self.node), &visitor)),
        };
        at(origin, result)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let origin = self.node.origin;
        if self.node.is_null() {
            at(origin, visitor.visit_none())
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let origin = self.node.origin;
        if self.node.is_null() {
            at(origin, visitor.visit_unit())
        } else {
            at(
                origin,
                Err(de::Error::invalid_type(unexpected(self.node), &visitor)),
            )
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let origin = self.node.origin;
        let result = match &self.node.value {
            Value::Seq(items) => visit_seq(items, visitor),
            // `hosts:` with every entry commented out means "none", not a type error.
            _ if self.node.is_null() => visit_seq(&[], visitor),
            _ => Err(de::Error::invalid_type(unexpected(self.node), &"a list")),
        };
        at(origin, result)
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let origin = self.node.origin;
        let result = match &self.node.value {
            Value::Map(entries) => visit_map(entries, visitor),
            // A section whose keys are all commented out takes its defaults.
            _ if self.node.is_null() => visit_map(&[], visitor),
            // Not `&visitor`: serde's wording names the Rust type (`struct UpstreamConfig`).
            _ => Err(de::Error::invalid_type(
                unexpected(self.node),
                &"a mapping of keys",
            )),
        };
        at(origin, result)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_map(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let origin = self.node.origin;
        let result = match &self.node.value {
            Value::Scalar(scalar) if !scalar.is_null() => visitor.visit_enum(EnumAccess {
                variant: scalar.text.as_str(),
                variant_origin: origin,
                content: None,
            }),
            Value::Map(entries) if entries.len() == 1 => {
                let entry = &entries[0];
                visitor.visit_enum(EnumAccess {
                    variant: entry.key.text.as_str(),
                    variant_origin: entry.key_origin,
                    content: Some(&entry.value),
                })
            }
            _ => Err(de::Error::invalid_type(
                unexpected(self.node),
                &"a variant name, or a mapping with a single key naming the variant",
            )),
        };
        at(origin, result)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }
}

struct SeqAccess<'de> {
    items: std::slice::Iter<'de, Node>,
}

impl<'de> de::SeqAccess<'de> for SeqAccess<'de> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        match self.items.next() {
            // Attaching here covers errors a `Deserialize` impl raises after reading the node
            // (a regex that does not compile), which no deserializer method sees.
            Some(item) => at(item.origin, seed.deserialize(NodeDeserializer::new(item))).map(Some),
            None => Ok(None),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct MapAccess<'de> {
    entries: std::slice::Iter<'de, Entry>,
    value: Option<&'de Node>,
}

impl<'de> de::MapAccess<'de> for MapAccess<'de> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        match self.entries.next() {
            Some(entry) => {
                self.value = Some(&entry.value);
                seed.deserialize(KeyDeserializer {
                    key: &entry.key,
                    origin: entry.key_origin,
                })
                .map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        match self.value.take() {
            Some(value) => at(value.origin, seed.deserialize(NodeDeserializer::new(value))),
            None => Err(de::Error::custom("value requested before its key")),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

/// Deserializes a mapping key: a string where a string is wanted, typed by its text otherwise
/// (so `piece_lengths: {0: 64KiB}` has a numeric key).
struct KeyDeserializer<'de> {
    key: &'de Scalar,
    origin: Origin,
}

impl<'de> de::Deserializer<'de> for KeyDeserializer<'de> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        at(self.origin, visit_scalar(self.key, visitor))
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        at(self.origin, visitor.visit_borrowed_str(&self.key.text))
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        at(
            self.origin,
            visitor.visit_enum(EnumAccess {
                variant: self.key.text.as_str(),
                variant_origin: self.origin,
                content: None,
            }),
        )
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char bytes byte_buf option unit
        unit_struct seq tuple tuple_struct map struct ignored_any
    }
}

struct EnumAccess<'de> {
    variant: &'de str,
    variant_origin: Origin,
    content: Option<&'de Node>,
}

impl<'de> de::EnumAccess<'de> for EnumAccess<'de> {
    type Error = DeError;
    type Variant = VariantAccess<'de>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self::Variant), DeError> {
        let deserializer = de::value::BorrowedStrDeserializer::<DeError>::new(self.variant);
        let variant = at(self.variant_origin, seed.deserialize(deserializer))?;
        Ok((
            variant,
            VariantAccess {
                content: self.content,
                origin: self.variant_origin,
            },
        ))
    }
}

struct VariantAccess<'de> {
    content: Option<&'de Node>,
    origin: Origin,
}

impl<'de> VariantAccess<'de> {
    fn content(&self, expected: &str) -> Result<&'de Node, DeError> {
        self.content.ok_or_else(|| DeError {
            message: format!("expected {expected} under the variant name"),
            origin: Some(self.origin),
            about_key: false,
        })
    }
}

impl<'de> de::VariantAccess<'de> for VariantAccess<'de> {
    type Error = DeError;

    fn unit_variant(self) -> Result<(), DeError> {
        match self.content {
            None => Ok(()),
            Some(node) if node.is_null() => Ok(()),
            Some(node) => Err(DeError {
                message: "this variant takes no settings".to_owned(),
                origin: Some(node.origin),
                about_key: false,
            }),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, DeError> {
        let node = self.content("its settings")?;
        at(node.origin, seed.deserialize(NodeDeserializer::new(node)))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, DeError> {
        let node = self.content("a list")?;
        de::Deserializer::deserialize_seq(NodeDeserializer::new(node), visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let node = self.content("a mapping of settings")?;
        de::Deserializer::deserialize_map(NodeDeserializer::new(node), visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(text: &str) -> Node {
        parse(text, 0).unwrap().unwrap()
    }

    #[test]
    fn plain_scalars_are_typed_on_demand_and_quoted_ones_stay_strings() {
        #[derive(serde::Deserialize, Debug)]
        struct T {
            port: u16,
            quoted: String,
            password: String,
            ratio: f64,
            on: bool,
            big: u64,
            none: Option<u8>,
            neg: i32,
        }
        let node = tree(
            "port: 15002\nquoted: \"15002\"\npassword: 12345\nratio: 0.5\non: true\n\
             big: 1_677_721_600\nnone: ~\nneg: -3\n",
        );
        let t: T = serde::Deserialize::deserialize(NodeDeserializer::new(&node)).unwrap();
        assert_eq!(t.port, 15002);
        assert_eq!(t.quoted, "15002");
        assert_eq!(t.password, "12345");
        assert_eq!(t.ratio, 0.5);
        assert!(t.on);
        assert_eq!(t.big, 1_677_721_600);
        assert_eq!(t.none, None);
        assert_eq!(t.neg, -3);

        let quoted_number = tree("port: \"15002\"\n");
        #[derive(serde::Deserialize, Debug)]
        struct P {
            #[allow(dead_code)]
            port: u16,
        }
        let error = <P as serde::Deserialize>::deserialize(NodeDeserializer::new(&quoted_number))
            .unwrap_err();
        assert!(error.message.contains("expected u16"), "{}", error.message);
        assert_eq!(error.origin.map(|o| (o.line, o.column)), Some((1, 7)));
    }

    #[test]
    fn anchors_aliases_and_merge_keys() {
        let node = tree("defaults: &d {a: 1, b: 2}\nx:\n  <<: *d\n  b: 3\ny: *d\n");
        let Value::Map(entries) = &node.value else {
            panic!()
        };
        let x = &entries[1].value;
        let Value::Map(x) = &x.value else { panic!() };
        let pairs: Vec<_> = x
            .iter()
            .map(|e| match &e.value.value {
                Value::Scalar(s) => (e.key.text.clone(), s.text.clone()),
                _ => panic!(),
            })
            .collect();
        assert_eq!(pairs, [("b".into(), "3".into()), ("a".into(), "1".into())]);
    }

    #[test]
    fn syntax_errors_duplicates_and_multiple_documents_have_positions() {
        let error = parse("a: 1\nb: [1, 2\n", 0).unwrap_err();
        assert!(error.line >= 2, "{error:?}");
        let error = parse("a: 1\nb: 2\na: 3\n", 0).unwrap_err();
        assert_eq!(error.line, 3);
        assert!(
            error
                .message
                .contains("duplicate key `a` (first set at line 1)")
        );
        let error = parse("a: 1\n---\nb: 2\n", 0).unwrap_err();
        assert!(error.message.contains("single YAML document"));
        assert!(parse("# only a comment\n", 0).unwrap().is_none());
        let error = parse("a: !custom 1\n", 0).unwrap_err();
        assert!(
            error.message.contains("unsupported tag"),
            "{}",
            error.message
        );
    }

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

    #[test]
    fn float_and_int_recognition() {
        for (text, float) in [
            ("1.5", true),
            ("1e9", true),
            (".5", true),
            ("1.", true),
            ("1", false),
            ("e9", false),
            ("1.2.3", false),
            ("5m", false),
        ] {
            assert_eq!(looks_like_float(text), float, "{text}");
        }
        assert!(matches!(parse_int("0x10"), Some(Resolved::Unsigned(16))));
        assert!(matches!(parse_int("-0o10"), Some(Resolved::Signed(-8))));
        assert!(parse_int("1_").is_none());
        assert!(parse_int("10s").is_none());
    }
}
