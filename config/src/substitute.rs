//! `${VAR}` / `${VAR:-default}` substitution in string values.
//!
//! It runs on the merged tree, after `extends`, so a variable used only in a base file and
//! overridden by the derived one is never required. Keys are left alone: a key that changes with
//! the environment would make the schema depend on it.

use std::collections::{BTreeMap, HashMap};

use crate::tree::{KeyPath, Node, Origin, Value};

/// Where environment variables come from. Tests pass a map or a closure instead of touching the
/// process environment (which is global and not thread-safe to mutate).
pub trait Env {
    /// The value of `name`, or `None` when it is not set.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment. A variable whose value is not valid UTF-8 counts as unset.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl<F: Fn(&str) -> Option<String>> Env for F {
    fn var(&self, name: &str) -> Option<String> {
        self(name)
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

impl Env for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// Why a value could not be substituted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SubstError {
    Undefined(String),
    Malformed(String),
}

/// A substitution failure and where it happened.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) path: KeyPath,
    pub(crate) origin: Origin,
    pub(crate) error: SubstError,
}

/// Substitutes every string value in `node`.
pub(crate) fn substitute_tree(node: &mut Node, env: &dyn Env) -> Result<(), Failure> {
    walk(node, &KeyPath::root(), env)
}

fn walk(node: &mut Node, path: &KeyPath, env: &dyn Env) -> Result<(), Failure> {
    match &mut node.value {
        Value::Scalar(scalar) => {
            if !scalar.text.contains('$') {
                return Ok(());
            }
            let (text, substituted) = substitute(&scalar.text, env).map_err(|error| Failure {
                path: path.clone(),
                origin: node.origin,
                error,
            })?;
            scalar.text = text;
            // `port: ${PORT:-15002}` must be a number once expanded: a value that used a variable
            // is typed by what it expanded to, as if it had been written unquoted.
            if substituted {
                scalar.plain = true;
            }
            Ok(())
        }
        Value::Seq(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                walk(item, &path.index(index), env)?;
            }
            Ok(())
        }
        Value::Map(entries) => {
            for entry in entries {
                walk(&mut entry.value, &path.key(entry.key.text.clone()), env)?;
            }
            Ok(())
        }
    }
}

/// Expands `${NAME}` and `${NAME:-default}` in `text`; `$${` stands for a literal `${`. A lone
/// `$` is kept as is. Returns the result and whether any variable was expanded.
pub(crate) fn substitute(text: &str, env: &dyn Env) -> Result<(String, bool), SubstError> {
    let mut out = String::with_capacity(text.len());
    let mut substituted = false;
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let Some(close) = tail.find('}') else {
                return Err(SubstError::Malformed(format!(
                    "unterminated `${{` in {text:?} (write `$${{` for a literal `${{`)"
                )));
            };
            let body = &tail[..close];
            let (name, default) = match body.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (body, None),
            };
            if !is_variable_name(name) {
                return Err(SubstError::Malformed(format!(
                    "`${{{body}}}` is not a variable reference: expected `${{NAME}}` or \
                     `${{NAME:-default}}` with NAME made of letters, digits and `_`"
                )));
            }
            // As in the shell, `:-` also applies when the variable is set but empty.
            let value = match (env.var(name), default) {
                (Some(value), Some(_)) if !value.is_empty() => value,
                (Some(value), None) => value,
                (_, Some(default)) => default.to_owned(),
                (None, None) => return Err(SubstError::Undefined(name.to_owned())),
            };
            out.push_str(&value);
            substituted = true;
            rest = &tail[close + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok((out, substituted))
}

fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("origin1".to_owned()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_defaults_and_escapes() {
        let cases = [
            ("${HOST}:15002", "origin1:15002", true),
            ("${MISSING:-127.0.0.1}:1", "127.0.0.1:1", true),
            ("${EMPTY:-fallback}", "fallback", true),
            ("${EMPTY}", "", true),
            ("${HOST:-}", "origin1", true),
            ("${MISSING:-}", "", true),
            ("$${HOST}", "${HOST}", false),
            ("cost $5 and $$", "cost $5 and $$", false),
            ("a${HOST}b${HOST}c", "aorigin1borigin1c", true),
            ("${MISSING:-a:-b}", "a:-b", true),
        ];
        for (input, expected, substituted) in cases {
            assert_eq!(
                substitute(input, &env),
                Ok((expected.to_owned(), substituted)),
                "{input}"
            );
        }
    }

    #[test]
    fn reports_undefined_and_malformed_references() {
        assert_eq!(
            substitute("x ${NOPE} y", &env),
            Err(SubstError::Undefined("NOPE".into()))
        );
        assert!(
            matches!(substitute("${HOST", &env), Err(SubstError::Malformed(m)) if m.contains("unterminated"))
        );
        assert!(matches!(
            substitute("${1X}", &env),
            Err(SubstError::Malformed(_))
        ));
        assert!(matches!(
            substitute("${}", &env),
            Err(SubstError::Malformed(_))
        ));
    }
}
