//! `Range` and `Content-Range` headers. Never a panic; a range that resolves against a blob
//! of `size` bytes lies inside it.
#![no_main]

use kraken_oci::range::{ByteRange, ByteSpan};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (size, header) = data.split_at(8);
    let size = u64::from_le_bytes(size.try_into().expect("8 bytes"));
    let Ok(text) = std::str::from_utf8(header) else {
        return;
    };
    if let Ok(range) = ByteRange::parse(text)
        && let Some(span) = range.resolve(size)
    {
        assert!(span.start() <= span.end(), "{text:?} {span:?}");
        assert!(span.end() < size, "{text:?} resolved past {size}: {span:?}");
    }
    let _ = ByteSpan::parse_content_range(text);
});
