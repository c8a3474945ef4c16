//! The contract every storage backend keeps, as one suite each `backend_*` test file runs
//! against its real (or in-test) server: fs, s3 (moto), gcs (gcp-storage-emulator), hdfs
//! (in-test WebHDFS), http and registry_blob (Debian's docker-registry).
//!
//! What a caller of [`Backend`] relies on, whatever the kind:
//! - an absent blob is `stat → None` and `download → NotFound`, never another error;
//! - a stored blob stats to its size and downloads to exactly its bytes, from a file or a
//!   reader source alike; storing it again is harmless;
//! - a source shorter than the size announced fails the upload and leaves nothing visible;
//! - `list` names what was stored (writable kinds);
//! - read-only kinds refuse uploads with `ReadOnly` and serve what their server holds.

use kraken_backend::{Backend, BackendError, UploadSource};
use kraken_core::{Digest, Namespace};

use super::{blob, file_with, read_all};

/// Runs the writable-backend contract on `backend` in `namespace`, with blobs derived from
/// `seed` (so two runs against one server do not collide).
pub async fn writable(backend: &dyn Backend, namespace: &Namespace, seed: u64) {
    let kind = backend.kind();
    let absent = Digest::of(&blob(1000, seed ^ 0xdead));
    assert_eq!(
        backend.stat(namespace, &absent).await.unwrap(),
        None,
        "{kind}: an absent blob stats to None"
    );
    let error = backend.download(namespace, &absent).await.unwrap_err();
    assert!(
        matches!(error, BackendError::NotFound { .. }),
        "{kind}: an absent blob downloads to NotFound, got {error:?}"
    );

    let from_file = blob(70_000, seed);
    let from_reader = blob(3_000, seed + 1);
    round_trip(backend, namespace, &[&from_file, &from_reader]).await;

    // Storing a blob again (a retried write-back) is harmless.
    let digest = Digest::of(&from_file);
    backend
        .upload(
            namespace,
            &digest,
            UploadSource::File(file_with(&from_file)),
            from_file.len() as u64,
        )
        .await
        .unwrap_or_else(|e| panic!("{kind}: a second upload of the same blob failed: {e:?}"));
    let downloaded = backend.download(namespace, &digest).await.unwrap();
    assert_eq!(
        read_all(downloaded).await,
        from_file,
        "{kind}: after re-upload"
    );

    // A source that ends before the announced size stores nothing.
    let short = blob(5_000, seed + 2);
    let short_digest = Digest::of(&short);
    let cut = short[..1_000].to_vec();
    let outcome = backend
        .upload(
            namespace,
            &short_digest,
            UploadSource::Reader(Box::pin(std::io::Cursor::new(cut))),
            short.len() as u64,
        )
        .await;
    assert!(
        outcome.is_err(),
        "{kind}: a short source must fail the upload"
    );
    assert_eq!(
        backend.stat(namespace, &short_digest).await.unwrap(),
        None,
        "{kind}: a failed upload leaves nothing visible"
    );

    let listed = backend.list("").await.unwrap();
    for data in [&from_file, &from_reader] {
        let digest = Digest::of(data);
        assert!(
            listed.iter().any(|b| b.digest == digest),
            "{kind}: list names {digest}: {listed:?}"
        );
    }
    assert!(
        !listed.iter().any(|b| b.digest == short_digest),
        "{kind}: list never names a failed upload"
    );
}

/// Runs the read-only contract: `present` (held by the server behind `backend`) is served
/// whole; `absent` is NotFound; uploads are refused as read-only.
pub async fn read_only(
    backend: &dyn Backend,
    namespace: &Namespace,
    present: &[u8],
    absent: &Digest,
) {
    let kind = backend.kind();
    let digest = Digest::of(present);
    assert_eq!(
        backend.stat(namespace, &digest).await.unwrap(),
        Some(present.len() as u64),
        "{kind}: a served blob stats to its size"
    );
    let downloaded = backend.download(namespace, &digest).await.unwrap();
    assert_eq!(
        read_all(downloaded).await,
        present,
        "{kind}: download bytes"
    );
    assert_eq!(
        backend.stat(namespace, absent).await.unwrap(),
        None,
        "{kind}: an absent blob stats to None"
    );
    let error = backend.download(namespace, absent).await.unwrap_err();
    assert!(
        matches!(error, BackendError::NotFound { .. }),
        "{kind}: an absent blob downloads to NotFound, got {error:?}"
    );
    let error = backend
        .upload(
            namespace,
            &digest,
            UploadSource::File(file_with(present)),
            present.len() as u64,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(error, BackendError::ReadOnly { .. }),
        "{kind}: uploads are refused as read-only, got {error:?}"
    );
}

/// Stores each blob (the first from a file, the rest from readers, as write-backs and backend
/// copies hand them over), then checks each stats to its size and downloads to its bytes.
/// Returns their digests, sorted (as `list` reports them).
pub async fn round_trip(
    backend: &dyn Backend,
    namespace: &Namespace,
    blobs: &[&[u8]],
) -> Vec<Digest> {
    let kind = backend.kind();
    let mut digests = Vec::new();
    for (i, data) in blobs.iter().enumerate() {
        let digest = Digest::of(data);
        let source = if i == 0 {
            UploadSource::File(file_with(data))
        } else {
            UploadSource::Reader(Box::pin(std::io::Cursor::new(data.to_vec())))
        };
        backend
            .upload(namespace, &digest, source, data.len() as u64)
            .await
            .unwrap_or_else(|e| panic!("{kind}: upload failed: {e:?}"));
        digests.push(digest);
    }
    for (data, digest) in blobs.iter().zip(&digests) {
        assert_eq!(
            backend.stat(namespace, digest).await.unwrap(),
            Some(data.len() as u64),
            "{kind}: a stored blob stats to its size"
        );
        let downloaded = backend.download(namespace, digest).await.unwrap();
        assert_eq!(downloaded.size, data.len() as u64, "{kind}: download size");
        assert_eq!(&read_all(downloaded).await, data, "{kind}: download bytes");
    }
    digests.sort();
    digests
}
