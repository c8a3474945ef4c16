//! Helpers shared by the origin's integration tests.

use bytes::Bytes;
use kraken_core::Namespace;

pub(crate) fn ns(text: &str) -> Namespace {
    text.parse().unwrap()
}

/// Deterministic incompressible bytes.
pub(crate) fn blob(len: usize, seed: u32) -> Bytes {
    let mut state = 0x9e37_79b9_u32 ^ seed.wrapping_mul(0x85eb_ca6b);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect::<Vec<_>>()
        .into()
}

/// Stores `data` in `backend` only (no origin holds it); returns its digest.
pub(crate) async fn put_in_backend(
    backend: &dyn kraken_backend::Backend,
    namespace: &Namespace,
    data: &Bytes,
) -> kraken_core::Digest {
    let digest = kraken_core::Digest::of(data);
    let reader = Box::pin(std::io::Cursor::new(data.clone()));
    backend
        .upload(
            namespace,
            &digest,
            kraken_backend::UploadSource::Reader(reader),
            data.len() as u64,
        )
        .await
        .unwrap();
    digest
}

/// Asks `raw` to delete `digest` and to plant a replica of a small blob through `Duplicate`;
/// returns both refusals (a test of who may not do either), panicking if one is accepted.
pub(crate) async fn delete_and_duplicate_refusals(
    raw: &mut kraken_proto::origin::v1::blob_service_client::BlobServiceClient<
        kraken_transport::observe::ObservedChannel,
    >,
    namespace: &Namespace,
    digest: &kraken_core::Digest,
) -> (tonic::Status, tonic::Status) {
    use kraken_proto::origin::v1::{
        DeleteRequest, DuplicateHeader, DuplicateRequest, duplicate_request,
    };
    let delete = raw
        .delete(DeleteRequest {
            namespace: namespace.to_string(),
            digest: digest.to_string(),
        })
        .await
        .unwrap_err();
    let header = DuplicateRequest {
        part: Some(duplicate_request::Part::Header(DuplicateHeader {
            namespace: namespace.to_string(),
            digest: planted().to_string(),
            size: Some(7),
            write_back_delay: None,
        })),
    };
    let chunk = DuplicateRequest {
        part: Some(duplicate_request::Part::Chunk(Bytes::from_static(
            b"planted",
        ))),
    };
    let duplicate = raw
        .duplicate(futures::stream::iter([header, chunk]))
        .await
        .unwrap_err();
    (delete, duplicate)
}

/// The blob [`delete_and_duplicate_refusals`] tries to plant.
pub(crate) fn planted() -> kraken_core::Digest {
    kraken_core::Digest::of(b"planted")
}
