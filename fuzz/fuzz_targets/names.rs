//! Names from request paths and RPCs: digests, namespaces, tags, references, `repo:tag`, and
//! the registry's `/v2/` routes. Never a panic; what parses prints back to something that
//! parses to the same value.
#![no_main]

use std::str::FromStr;

use kraken_core::{Digest, Namespace};
use kraken_oci::route::Route;
use kraken_oci::{Reference, Tag, TaggedName, parse_repository};
use libfuzzer_sys::fuzz_target;

fn round_trip<T: FromStr + ToString + PartialEq + std::fmt::Debug>(text: &str) {
    if let Ok(value) = text.parse::<T>() {
        let printed = value.to_string();
        let again = printed
            .parse::<T>()
            .ok()
            .expect("prints to something that parses");
        assert_eq!(again, value, "{text:?} -> {printed:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    round_trip::<Digest>(text);
    round_trip::<Namespace>(text);
    round_trip::<Tag>(text);
    round_trip::<Reference>(text);
    round_trip::<TaggedName>(text);
    let _ = parse_repository(text);
    let _ = Route::parse(text);
    let _ = Route::parse_tail(text);
});
