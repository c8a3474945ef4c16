//! Serde helpers for byte sizes and bit rates.
//!
//! `bytesize` parses `4MiB`, `1GB` and plain integers, but prints `1.6 GiB` for 1677721600, which
//! would make the printed effective config lossy; these helpers print the exact value instead
//! (`64MiB` when it is a whole number of a binary unit, the integer otherwise) and say what was
//! expected when parsing fails.

use std::collections::BTreeMap;
use std::fmt;

use bytesize::ByteSize;
use serde::de::{self, Deserializer, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

const BYTE_SIZE_EXPECTED: &str =
    "a byte size such as `4MiB`, `64KiB`, `1GB` or an integer number of bytes";

/// Exact textual form of a byte count: `64MiB`, `1GiB`, or the integer.
pub(crate) fn format_bytes(bytes: u64) -> String {
    const UNITS: [(&str, u64); 5] = [
        ("PiB", 1 << 50),
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (unit, size) in UNITS {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    bytes.to_string()
}

struct ByteSizeVisitor;

impl Visitor<'_> for ByteSizeVisitor {
    type Value = ByteSize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(BYTE_SIZE_EXPECTED)
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<ByteSize, E> {
        Ok(ByteSize(value))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<ByteSize, E> {
        u64::try_from(value)
            .map(ByteSize)
            .map_err(|_| E::invalid_value(de::Unexpected::Signed(value), &self))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<ByteSize, E> {
        value
            .trim()
            .parse::<ByteSize>()
            .map_err(|_| E::invalid_value(de::Unexpected::Str(value), &self))
    }
}

/// A [`ByteSize`] that prints exactly; usable as a map key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Bytes(pub(crate) ByteSize);

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ByteSizeVisitor).map(Bytes)
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format_bytes(self.0.0))
    }
}

/// `#[serde(with = "crate::units::bytes")]` for a [`ByteSize`] field.
pub(crate) mod bytes {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(
        value: &ByteSize,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        Bytes(*value).serialize(serializer)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<ByteSize, D::Error> {
        Bytes::deserialize(deserializer).map(|b| b.0)
    }
}

/// `#[serde(with = "crate::units::byte_map")]` for a `BTreeMap<ByteSize, ByteSize>` field.
pub(crate) mod byte_map {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(
        value: &BTreeMap<ByteSize, ByteSize>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_map(value.iter().map(|(k, v)| (Bytes(*k), Bytes(*v))))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<BTreeMap<ByteSize, ByteSize>, D::Error> {
        let map = BTreeMap::<Bytes, Bytes>::deserialize(deserializer)?;
        Ok(map.into_iter().map(|(k, v)| (k.0, v.0)).collect())
    }
}

/// `#[serde(with = "crate::units::bits_per_sec")]`: a bit rate given as an integer
/// (`1677721600`) or with a unit (`800Mbit`, `1.6Gbit`, `10Gbps`, `200Mibit`). Printed as the
/// integer, which is what Kraken configs use.
pub(crate) mod bits_per_sec {
    use super::*;

    const EXPECTED: &str = "a bit rate: an integer number of bits per second, or a number with a unit such as \
         `800Mbit`, `1.6Gbit` or `200Mibit`";

    pub(crate) fn serialize<S: Serializer>(value: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(*value)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        deserializer.deserialize_any(BitRateVisitor)
    }

    struct BitRateVisitor;

    impl Visitor<'_> for BitRateVisitor {
        type Value = u64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(EXPECTED)
        }

        fn visit_u64<E: de::Error>(self, value: u64) -> Result<u64, E> {
            Ok(value)
        }

        fn visit_i64<E: de::Error>(self, value: i64) -> Result<u64, E> {
            u64::try_from(value).map_err(|_| E::invalid_value(de::Unexpected::Signed(value), &self))
        }

        fn visit_str<E: de::Error>(self, value: &str) -> Result<u64, E> {
            parse_bit_rate(value).ok_or_else(|| E::invalid_value(de::Unexpected::Str(value), &self))
        }
    }

    pub(crate) fn parse_bit_rate(text: &str) -> Option<u64> {
        let text = text.trim();
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: f64 = number.parse().ok()?;
        let unit = unit.trim();
        let unit = unit
            .strip_suffix("ps")
            .map(|u| format!("{u}it"))
            .unwrap_or_else(|| unit.to_owned());
        let multiplier: f64 = match unit.as_str() {
            "" | "bit" | "b" => 1.0,
            "Kbit" | "kbit" => 1e3,
            "Mbit" => 1e6,
            "Gbit" => 1e9,
            "Tbit" => 1e12,
            "Kibit" => 1024.0,
            "Mibit" => 1024.0 * 1024.0,
            "Gibit" => 1024.0 * 1024.0 * 1024.0,
            _ => return None,
        };
        let bits = (number * multiplier).round();
        (bits.is_finite() && bits >= 0.0 && bits <= u64::MAX as f64).then_some(bits as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_print_exactly() {
        assert_eq!(format_bytes(0), "0");
        assert_eq!(format_bytes(64 * 1024), "64KiB");
        assert_eq!(format_bytes(32 << 20), "32MiB");
        assert_eq!(format_bytes(1_000_000), "1000000");
        assert_eq!(format_bytes(3 << 30), "3GiB");
        for n in [0, 1, 1023, 1024, 1_000_000, 1_677_721_600, u64::MAX] {
            assert_eq!(format_bytes(n).parse::<ByteSize>().unwrap().0, n, "{n}");
        }
    }

    #[test]
    fn bit_rates() {
        use bits_per_sec::parse_bit_rate;
        assert_eq!(parse_bit_rate("1677721600"), Some(1_677_721_600));
        assert_eq!(parse_bit_rate("800Mbit"), Some(800_000_000));
        assert_eq!(parse_bit_rate("1.6Gbit"), Some(1_600_000_000));
        assert_eq!(parse_bit_rate("10Gbps"), Some(10_000_000_000));
        assert_eq!(parse_bit_rate("200Mibit"), Some(200 << 20));
        assert_eq!(parse_bit_rate("fast"), None);
        assert_eq!(parse_bit_rate("10MB"), None);
    }
}
