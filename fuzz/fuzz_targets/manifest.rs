//! Manifests as a registry client or a peer sends them: any bytes, under any of the
//! `Content-Type`s a push may carry. Parsing never panics, and what parses is consistent.
#![no_main]

use kraken_oci::Manifest;
use libfuzzer_sys::fuzz_target;

const CONTENT_TYPES: [Option<&str>; 6] = [
    None,
    Some("application/json"),
    Some("application/vnd.oci.image.manifest.v1+json"),
    Some("application/vnd.oci.image.index.v1+json"),
    Some("application/vnd.docker.distribution.manifest.v2+json"),
    Some("application/vnd.docker.distribution.manifest.list.v2+json; charset=utf-8"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let content_type = CONTENT_TYPES[usize::from(selector) % CONTENT_TYPES.len()];
    if let Ok(manifest) = Manifest::parse(content_type, body) {
        let references = manifest.references();
        // Every reference is a digest that prints and parses back to itself.
        for digest in &references {
            let again: kraken_core::Digest = digest.to_string().parse().expect("digest round trip");
            assert_eq!(&again, digest);
        }
        // The media type it reports is one it would accept again.
        let reparsed =
            Manifest::parse(Some(manifest.media_type()), body).expect("same type accepted");
        assert_eq!(reparsed.references(), references);
    }
});
