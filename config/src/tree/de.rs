//! A serde `Deserializer` over the [`Node`] tree: scalars are typed on demand by the YAML 1.2
//! core schema, and every error carries the position of the node it is about.

use std::fmt;

use serde::de::{self, DeserializeSeed, Unexpected, Visitor};

use super::{Entry, Node, Origin, Scalar, Value};

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
    use crate::tree::parse;

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
