//! YAML events → [`Node`] tree: positions, quoting, anchors, aliases and `<<` merge keys.

use std::collections::HashMap;

use serde_saphyr::granit_parser::{Event, Options, Parser, ScalarStyle, Span};

use super::{Entry, FileId, Node, Origin, Scalar, Value};

/// A YAML syntax error, with the position the parser reported.
#[derive(Debug, Clone)]
pub(crate) struct SyntaxError {
    pub(crate) line: usize,
    pub(crate) column: usize,
    pub(crate) message: String,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(text: &str) -> Node {
        parse(text, 0).unwrap().unwrap()
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
}
