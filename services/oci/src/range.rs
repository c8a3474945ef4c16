//! Byte ranges: the `Range` header of a blob `GET` ([`ByteRange`], resolved against the blob's
//! size into a [`ByteSpan`]), the `Content-Range` of a chunked upload `PATCH` (parsed straight
//! into a [`ByteSpan`]), and the headers that answer them.
//!
//! Every number here comes from a client, so nothing may overflow: a span always has a length
//! that fits in a `u64` (`Content-Range: 0-18446744073709551615` is refused, not wrapped), and
//! resolving a range against a size never computes past either.

use std::fmt;

/// How much of a client's header an error message repeats.
const MAX_ECHO: usize = 80;

/// A `Range` or `Content-Range` header that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("Range `{value}` is not a single `bytes=start-end`, `bytes=start-` or `bytes=-n`")]
    Malformed { value: String },
    #[error("Range `{value}` asks for several ranges; only a single range is served")]
    MultipleRanges { value: String },
    #[error(
        "Content-Range `{value}` is not `<start>-<end>` (inclusive, optionally `bytes <start>-<end>/<size>`)"
    )]
    MalformedContentRange { value: String },
    #[error("Content-Range `{value}` covers 2^64 bytes or more")]
    TooLong { value: String },
}

fn echo(value: &str) -> String {
    value.chars().take(MAX_ECHO).collect()
}

/// A single byte range of a `Range: bytes=…` header, before it is resolved against a size
/// (multipart ranges are not served).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=start-` or `bytes=start-end` (inclusive).
    From { start: u64, end: Option<u64> },
    /// `bytes=-n`: the last `n` bytes.
    Suffix(u64),
}

impl ByteRange {
    /// Parses a `Range` header value. The unit must be `bytes`; `start-end` must not be
    /// reversed; several ranges are refused.
    pub fn parse(value: &str) -> Result<Self, RangeError> {
        let malformed = || RangeError::Malformed { value: echo(value) };
        let spec = value.trim().strip_prefix("bytes=").ok_or_else(malformed)?;
        if spec.contains(',') {
            return Err(RangeError::MultipleRanges { value: echo(value) });
        }
        let (start, end) = spec.split_once('-').ok_or_else(malformed)?;
        let (start, end) = (start.trim(), end.trim());
        let number = |text: &str| text.parse::<u64>().map_err(|_| malformed());
        match (start.is_empty(), end.is_empty()) {
            (true, false) => Ok(Self::Suffix(number(end)?)),
            (false, true) => Ok(Self::From {
                start: number(start)?,
                end: None,
            }),
            (false, false) => {
                let (start, end) = (number(start)?, number(end)?);
                if end < start {
                    return Err(malformed());
                }
                Ok(Self::From {
                    start,
                    end: Some(end),
                })
            }
            (true, true) => Err(malformed()),
        }
    }

    /// The bytes this range selects from a blob of `size` bytes, `None` when it selects none
    /// (a start at or past the end, `bytes=-0`, any range of an empty blob). An end past the
    /// blob is clamped to its last byte, a suffix longer than the blob is the whole blob.
    pub fn resolve(self, size: u64) -> Option<ByteSpan> {
        let last = size.checked_sub(1)?;
        match self {
            Self::From { start, .. } if start > last => None,
            Self::From { start, end } => Some(ByteSpan {
                start,
                end: end.map_or(last, |end| end.min(last)),
            }),
            Self::Suffix(n) => {
                let n = n.min(size);
                (n > 0).then(|| ByteSpan {
                    start: size - n,
                    end: last,
                })
            }
        }
    }
}

impl fmt::Display for ByteRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::From {
                start,
                end: Some(end),
            } => write!(f, "bytes={start}-{end}"),
            Self::From { start, end: None } => write!(f, "bytes={start}-"),
            Self::Suffix(n) => write!(f, "bytes=-{n}"),
        }
    }
}

/// A non-empty run of bytes, `start..=end`, whose length fits in a `u64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSpan {
    start: u64,
    end: u64,
}

impl ByteSpan {
    /// `start..=end`; `None` when reversed or when the length (`end - start + 1`) does not fit
    /// in a `u64`.
    pub fn new(start: u64, end: u64) -> Option<Self> {
        end.checked_sub(start)?.checked_add(1)?;
        Some(Self { start, end })
    }

    /// The `len` bytes from `start`; `None` when `len` is 0 or the span would pass `u64::MAX`.
    pub fn with_len(start: u64, len: u64) -> Option<Self> {
        let end = start.checked_add(len.checked_sub(1)?)?;
        Some(Self { start, end })
    }

    /// Parses an upload chunk's `Content-Range`: `<start>-<end>` (inclusive), as Docker sends
    /// it, or HTTP's `bytes <start>-<end>/<size>` (the size is ignored).
    pub fn parse_content_range(value: &str) -> Result<Self, RangeError> {
        let malformed = || RangeError::MalformedContentRange { value: echo(value) };
        let text = value.trim();
        let text = text.strip_prefix("bytes").map_or(text, str::trim_start);
        let text = text.split('/').next().unwrap_or_default().trim();
        let (start, end) = text.split_once('-').ok_or_else(malformed)?;
        let number = |text: &str| text.trim().parse::<u64>().map_err(|_| malformed());
        let (start, end) = (number(start)?, number(end)?);
        if end < start {
            return Err(malformed());
        }
        Self::new(start, end).ok_or_else(|| RangeError::TooLong { value: echo(value) })
    }

    pub fn start(&self) -> u64 {
        self.start
    }

    /// The last byte (inclusive).
    pub fn end(&self) -> u64 {
        self.end
    }

    /// The number of bytes, at least 1.
    pub fn len(&self) -> u64 {
        // Cannot overflow: both constructors check it.
        self.end - self.start + 1
    }

    /// Never true; here for the `len` convention.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The `Content-Range` of a `206` serving this span of a blob of `size` bytes:
    /// `bytes <start>-<end>/<size>`.
    pub fn content_range(&self, size: u64) -> String {
        format!("bytes {}-{}/{size}", self.start, self.end)
    }
}

/// The `Content-Range` of a `416`: `bytes */<size>`, so the client learns the size.
pub fn unsatisfied_content_range(size: u64) -> String {
    format!("bytes */{size}")
}

/// The `Range` header of an upload session holding `size` bytes: `0-<last byte>`. Docker's
/// registry answers `0-0` for an empty session too, and clients expect it.
pub fn upload_range(size: u64) -> String {
    format!("0-{}", size.saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(start: u64, end: u64) -> Option<ByteSpan> {
        ByteSpan::new(start, end)
    }

    #[test]
    fn single_ranges_parse() {
        let from = |start, end| ByteRange::From { start, end };
        let cases = [
            ("bytes=0-99", from(0, Some(99))),
            ("bytes=100-", from(100, None)),
            ("bytes=-5", ByteRange::Suffix(5)),
            ("bytes=-0", ByteRange::Suffix(0)),
            ("  bytes= 3 - 4 ", from(3, Some(4))),
            ("bytes=7-7", from(7, Some(7))),
            ("bytes=0-18446744073709551615", from(0, Some(u64::MAX))),
            ("bytes=18446744073709551615-", from(u64::MAX, None)),
        ];
        for (text, expected) in cases {
            assert_eq!(ByteRange::parse(text), Ok(expected), "{text}");
        }
        assert_eq!(from(0, Some(9)).to_string(), "bytes=0-9");
        assert_eq!(from(9, None).to_string(), "bytes=9-");
        assert_eq!(ByteRange::Suffix(3).to_string(), "bytes=-3");
    }

    #[test]
    fn malformed_ranges_are_refused_naming_the_header() {
        for bad in [
            "bytes=5-1",
            "bytes=-",
            "bytes=",
            "bytes=5",
            "items=0-1",
            "Bytes=0-1",
            "bytes=a-b",
            "bytes=1-2-3",
            "bytes=--1",
            "bytes=0-18446744073709551616",
            "bytes=-18446744073709551616",
            "",
        ] {
            let error = ByteRange::parse(bad).unwrap_err();
            assert!(
                matches!(error, RangeError::Malformed { .. }),
                "{bad}: {error:?}"
            );
            assert!(error.to_string().contains(bad), "{bad}: {error}");
        }
    }

    #[test]
    fn multiple_ranges_are_refused() {
        for multi in [
            "bytes=0-1,3-4",
            "bytes=0-1, 3-4",
            "bytes=-1,0-",
            "bytes=0-1,",
        ] {
            assert!(
                matches!(
                    ByteRange::parse(multi),
                    Err(RangeError::MultipleRanges { .. })
                ),
                "{multi}"
            );
        }
    }

    #[test]
    fn long_headers_are_not_echoed_whole() {
        let long = format!("bytes={}", "9".repeat(10_000));
        let message = ByteRange::parse(&long).unwrap_err().to_string();
        assert!(message.len() < 200, "{message}");
    }

    #[test]
    fn ranges_resolve_clamped_or_unsatisfiable() {
        let resolve = |text: &str, size| ByteRange::parse(text).unwrap().resolve(size);
        assert_eq!(resolve("bytes=0-9", 100), span(0, 9));
        assert_eq!(resolve("bytes=90-", 100), span(90, 99));
        assert_eq!(resolve("bytes=90-500", 100), span(90, 99));
        assert_eq!(resolve("bytes=99-99", 100), span(99, 99));
        assert_eq!(resolve("bytes=100-", 100), None);
        assert_eq!(resolve("bytes=100-200", 100), None);
        // Suffix ranges: the last n bytes, the whole blob when n is longer, none for n = 0.
        assert_eq!(resolve("bytes=-10", 100), span(90, 99));
        assert_eq!(resolve("bytes=-100", 100), span(0, 99));
        assert_eq!(resolve("bytes=-500", 100), span(0, 99));
        assert_eq!(resolve("bytes=-0", 100), None);
        // An empty blob has no satisfiable range.
        assert_eq!(resolve("bytes=0-0", 0), None);
        assert_eq!(resolve("bytes=0-", 0), None);
        assert_eq!(resolve("bytes=-1", 0), None);
    }

    #[test]
    fn resolving_at_the_limits_does_not_overflow() {
        let max = u64::MAX;
        let whole = ByteRange::parse("bytes=0-18446744073709551615").unwrap();
        assert_eq!(whole.resolve(100), span(0, 99));
        let resolved = whole.resolve(max).unwrap();
        assert_eq!(
            (resolved.start(), resolved.end(), resolved.len()),
            (0, max - 1, max)
        );
        let open = ByteRange::parse("bytes=18446744073709551614-").unwrap();
        assert_eq!(open.resolve(max), span(max - 1, max - 1));
        assert_eq!(
            ByteRange::From {
                start: max,
                end: None
            }
            .resolve(max),
            None
        );
        assert_eq!(ByteRange::Suffix(max).resolve(max), span(0, max - 1));
        assert_eq!(ByteRange::Suffix(max).resolve(1), span(0, 0));
    }

    #[test]
    fn content_ranges_in_docker_and_http_forms() {
        let parse = |text: &str| ByteSpan::parse_content_range(text).ok();
        assert_eq!(parse("0-99"), span(0, 99));
        assert_eq!(parse("bytes 100-199/*"), span(100, 199));
        assert_eq!(parse("bytes 100-199/1000"), span(100, 199));
        assert_eq!(parse(" 5 - 5 "), span(5, 5));
        assert_eq!(parse("bytes=5-5"), None);
        assert_eq!(parse("9-1"), None);
        assert_eq!(parse("a-b"), None);
        assert_eq!(parse("10"), None);
        assert_eq!(parse("-10"), None);
        assert_eq!(parse("10-"), None);
        assert_eq!(parse(""), None);
        assert_eq!(parse("0-18446744073709551616"), None);
    }

    #[test]
    fn a_content_range_of_two_to_the_64_bytes_is_refused_not_wrapped() {
        let error = ByteSpan::parse_content_range("0-18446744073709551615").unwrap_err();
        assert!(matches!(error, RangeError::TooLong { .. }), "{error:?}");
        assert!(error.to_string().contains("0-18446744073709551615"));
        // One byte short of it is fine, and its length is exact.
        let max = u64::MAX;
        let almost = ByteSpan::parse_content_range("1-18446744073709551615").unwrap();
        assert_eq!(almost.len(), max);
        let almost = ByteSpan::parse_content_range("0-18446744073709551614").unwrap();
        assert_eq!(almost.len(), max);
        let last = ByteSpan::parse_content_range("18446744073709551615-18446744073709551615");
        assert_eq!(last.map(|span| span.len()), Ok(1));
    }

    #[test]
    fn spans_are_non_empty_and_bounded() {
        let max = u64::MAX;
        assert_eq!(ByteSpan::new(5, 4), None);
        assert_eq!(ByteSpan::new(0, max), None);
        assert_eq!(ByteSpan::new(0, max - 1).map(|s| s.len()), Some(max));
        assert_eq!(ByteSpan::with_len(10, 0), None);
        assert_eq!(ByteSpan::with_len(10, 5), span(10, 14));
        assert_eq!(ByteSpan::with_len(max, 1), span(max, max));
        assert_eq!(ByteSpan::with_len(max, 2), None);
        assert_eq!(ByteSpan::with_len(1, max), span(1, max));
        let span = ByteSpan::new(100, 199).unwrap();
        assert!(!span.is_empty());
        assert_eq!(span.content_range(70_000), "bytes 100-199/70000");
        assert_eq!(unsatisfied_content_range(70_000), "bytes */70000");
    }

    #[test]
    fn upload_ranges_name_the_last_byte() {
        assert_eq!(upload_range(0), "0-0");
        assert_eq!(upload_range(1), "0-0");
        assert_eq!(upload_range(100), "0-99");
        assert_eq!(upload_range(u64::MAX), "0-18446744073709551614");
    }
}
