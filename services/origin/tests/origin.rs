//! A real origin on loopback, driven over gRPC with real mutual TLS: uploads (one-shot,
//! resumable, concurrent, wrong), downloads, metadata, blobs only the fs backend holds, ring
//! locations, role checks, and seeding a blob to an agent's scheduler over QUIC.

// Test helpers outside `#[test]` functions: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use kraken_backend::{Backend, FsBackend, UploadSource};
use kraken_config::Pattern;
use kraken_config::backend::{
    BackendBandwidthConfig, BackendConfig, BackendKind, FsBackendConfig, S3BackendConfig,
};
use kraken_config::origin::OriginConfig;
use kraken_config::store::StoreConfig;
use kraken_core::{Digest, Namespace, PeerId, PeerInfo};
use kraken_origin::Origin;
use kraken_originclient::{
    ByteStream, CHUNK_SIZE, ClientError, OriginClient, RETRY_AFTER_MS, UPLOAD_OFFSET, UploadCursor,
    upload_resumable,
};
use kraken_proto::origin::v1::{
    AbortUploadRequest, CommitUploadRequest, DeleteRequest, DownloadRequest, DuplicateHeader,
    DuplicateRequest, GetMetaInfoRequest, GetUploadStatusRequest, PrefetchRequest,
    ReplicateToRemoteRequest, StartUploadRequest, StatRequest, UploadChunksRequest, UploadHeader,
    UploadRequest, duplicate_request, upload_request,
};
use kraken_scheduler::{AnnounceError, AnnounceReply, Announcer, DriverConfig, Scheduler};
use kraken_store::BlobStore;
use kraken_tls::{DevCa, LeafOptions, Role, TlsMaterial};
use kraken_transport::bandwidth::BandwidthLimiter;
use kraken_transport::quic::{PeerEndpoint, QuicTuning};
use kraken_transport::ring::{Member, Ring};
use tokio::net::TcpListener;
use tonic::Code;

use common::{blob, delete_and_duplicate_refusals, ns, planted, put_in_backend};

// ---------------------------------------------------------------------------------------------
// Harness

struct TestOrigin {
    origin: Origin,
    name: String,
    backend_root: PathBuf,
    store_dir: PathBuf,
    _dir: tempfile::TempDir,
}

fn tls(ca: &DevCa, role: Role) -> TlsMaterial {
    let issued = ca.issue(role, &LeafOptions::default()).unwrap();
    TlsMaterial::from_pem(ca.cert_pem(), &issued.cert_pem, &issued.key_pem).unwrap()
}

fn fs_rule(namespace: &str, root: &Path) -> BackendConfig {
    BackendConfig {
        namespace: Pattern::new(namespace).unwrap(),
        backend: BackendKind::Fs(FsBackendConfig {
            root: root.to_owned(),
        }),
        bandwidth: BackendBandwidthConfig::default(),
    }
}

/// An origin with a store and an fs backend in a fresh temporary directory; `tweak` edits the
/// config before start.
async fn start_origin(ca: &DevCa, tweak: impl FnOnce(&mut OriginConfig)) -> TestOrigin {
    let (config, listener, dir) = origin_config().await;
    let mut config = config;
    tweak(&mut config);
    let origin = Origin::start(config.clone(), tls(ca, Role::Origin), listener)
        .await
        .unwrap();
    TestOrigin {
        origin,
        name: config.name,
        backend_root: dir.path().join("backend"),
        store_dir: dir.path().join("store"),
        _dir: dir,
    }
}

async fn origin_config() -> (OriginConfig, TcpListener, tempfile::TempDir) {
    kraken_tls::install_crypto_provider();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let name = format!("127.0.0.1:{}", addr.port());
    let mut config = OriginConfig {
        name: name.clone(),
        store: StoreConfig {
            dir: dir.path().join("store"),
            ..StoreConfig::default()
        },
        backends: vec![fs_rule(".*", &dir.path().join("backend"))],
        ..OriginConfig::default()
    };
    config.listen.grpc = addr;
    config.listen.p2p = "127.0.0.1:0".parse().unwrap();
    config.cluster.hosts.static_hosts = vec![name];
    (config, listener, dir)
}

impl TestOrigin {
    fn client(&self, ca: &DevCa, role: Role) -> OriginClient {
        OriginClient::connect(&tls(ca, role), &self.origin.grpc_addr().to_string()).unwrap()
    }

    fn backend(&self) -> FsBackend {
        FsBackend::new(&self.backend_root)
    }

    async fn stop(self) {
        self.origin.shutdown().await.unwrap();
    }
}

async fn collect(mut stream: ByteStream) -> (Vec<u8>, Vec<usize>) {
    let (mut data, mut chunks) = (Vec::new(), Vec::new());
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        chunks.push(chunk.len());
        data.extend_from_slice(&chunk);
    }
    (data, chunks)
}

async fn upload(
    client: &OriginClient,
    namespace: &Namespace,
    data: &Bytes,
) -> kraken_originclient::Uploaded {
    client
        .upload(
            namespace,
            &Digest::of(data),
            std::io::Cursor::new(data.clone()),
            Some(data.len() as u64),
        )
        .await
        .unwrap()
}

fn status_of(error: ClientError) -> tonic::Status {
    match error {
        ClientError::Status(status) => status,
        other => panic!("expected a status, got {other:?}"),
    }
}

/// Files (not directories) anywhere under `dir`.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files_under(&path));
        } else {
            found.push(path);
        }
    }
    found
}

// ---------------------------------------------------------------------------------------------
// Uploads and downloads

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_then_download_round_trips_whole_and_ranged() {
    let ca = DevCa::new().unwrap();
    let origin = start_origin(&ca, |_| {}).await;
    let client = origin.client(&ca, Role::Proxy);
    let namespace = ns("library/ubuntu");
    let data = blob((5 << 20) + 123, 1);
    let digest = Digest::of(&data);

    let uploaded = upload(&client, &namespace, &data).await;
    assert_eq!(uploaded.digest, digest);
    assert_eq!(uploaded.size, data.len() as u64);
    assert!(uploaded.created);

    let (downloaded, chunks) = collect(client.download(&namespace, &digest).await.unwrap()).await;
    assert!(downloaded == data[..], "byte-identical download");
    assert!(chunks.iter().all(|len| *len <= CHUNK_SIZE), "{chunks:?}");

    let (offset, length) = ((1 << 20) + 7, (2 << 20) + 3);
    let (range, _) = collect(
        client
            .download_range(&namespace, &digest, offset, Some(length))
            .await
            .unwrap(),
    )
    .await;
    assert!(range[..] == data[offset as usize..(offset + length) as usize]);
    let (tail, _) = collect(
        client
            .download_range(&namespace, &digest, data.len() as u64 - 10, None)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(tail[..], data[data.len() - 10..]);

    for (offset, length) in [(data.len() as u64 + 1, None), (10, Some(data.len() as u64))] {
        let error = client
            .download_range(&namespace, &digest, offset, length)
            .await
            .err()
            .expect("out of range");
        assert_eq!(error.code(), Some(Code::OutOfRange), "{error}");
    }

    // Written back to the namespace's backend (by the durable queue, right after the upload
    // was acknowledged), and so no longer pinned.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !origin.origin.pending_write_backs().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "write-back never finished"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let in_backend = std::fs::read(origin.backend().blob_path(&namespace, &digest)).unwrap();
    assert!(in_backend == data[..]);
    let info = origin.origin.store().stat(&digest).await.unwrap().unwrap();
    assert!(!info.persist, "unpinned once written back");
    origin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_digest_is_refused_and_nothing_is_kept() {
    let ca = DevCa::new().unwrap();
    let origin = start_origin(&ca, |_| {}).await;
    let client = origin.client(&ca, Role::Client);
    let namespace = ns("library/ubuntu");
    let data = blob(3 << 20, 2);
    let claimed = Digest::of(b"something else");

    let error = client
        .upload(
            &namespace,
            &claimed,
            std::io::Cursor::new(data.clone()),
            None,
        )
        .await
        .unwrap_err();
    let status = status_of(error);
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains(&claimed.to_string()),
        "{status:?}"
    );
    assert!(
        status.message().contains(&Digest::of(&data).to_string()),
        "names the actual digest: {status:?}"
    );

    assert!(origin.origin.store().list().is_empty());
    assert!(files_under(&origin.store_dir.join("uploads")).is_empty());
    assert!(files_under(&origin.backend_root).is_empty());
    assert!(origin.backend().list("").await.unwrap().is_empty());

    // A size that does not match the stream is refused as well.
    let error = client
        .upload(
            &namespace,
            &Digest::of(&data),
            std::io::Cursor::new(data.clone()),
            Some(data.len() as u64 - 1),
        )
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(Code::InvalidArgument), "{error}");
    assert!(origin.origin.store().list().is_empty());
    origin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_upload_leaves_nothing_behind() {
    let ca = DevCa::new().unwrap();
    let origin = start_origin(&ca, |_| {}).await;
    let client = origin.client(&ca, Role::Proxy);
    let namespace = ns("library/ubuntu");
    let data = blob(2 << 20, 12);
    // The source fails after the first MiB: the client cancels the call.
    let chunks = futures::stream::iter([
        Ok(data.slice(..1 << 20)),
        Err(std::io::Error::other("disk on fire")),
    ]);
    let error = client
        .upload_stream(
            &namespace,
            &Digest::of(&data),
            chunks,
            Some(data.len() as u64),
        )
        .await
        .unwrap_err();
    assert!(matches!(error, ClientError::Source(_)), "{error}");
    let uploads = origin.store_dir.join("uploads");
    for _ in 0..200 {
        if files_under(&uploads).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(files_under(&uploads).is_empty(), "staging was cleaned up");
    assert!(origin.origin.store().list().is_empty());

    // An empty blob is a blob too.
    let empty = Bytes::new();
    let uploaded = upload(&client, &namespace, &empty).await;
    assert_eq!(uploaded.size, 0);
    let (downloaded, _) =
        collect(client.download(&namespace, &uploaded.digest).await.unwrap()).await;
    assert!(downloaded.is_empty());
    let metainfo = client
        .get_metainfo(&namespace, &uploaded.digest)
        .await
        .unwrap();
    assert_eq!((metainfo.length(), metainfo.num_pieces()), (0, 0));
    origin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_upload_streams_are_invalid_arguments() {
    let ca = DevCa::new().unwrap();
    let origin = start_origin(&ca, |_| {}).await;
    let mut raw = origin.client(&ca, Role::Proxy).raw();
    let chunk = |data: &'static [u8]| UploadRequest {
        part: Some(upload_request::Part::Chunk(Bytes::from_static(data))),
    };
    let header = |namespace: &str, digest: String| UploadRequest {
        part: Some(upload_request::Part::Header(UploadHeader {
            namespace: namespace.to_owned(),
            digest,
            size: None,
        })),
    };
    let good = Digest::of(b"abc").to_string();
    let cases = vec![
        ("no header", vec![chunk(b"abc")]),
        (
            "bad digest",
            vec![header("library/x", "sha256:nope".into()), chunk(b"abc")],
        ),
        (
            "bad namespace",
            vec![header("Library/X", good.clone()), chunk(b"abc")],
        ),
        (
            "two headers",
            vec![
                header("library/x", good.clone()),
                header("library/x", good.clone()),
            ],
        ),
    ];
    for (case, messages) in cases {
        let status = raw
            .upload(futures::stream::iter(messages))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
    }
    assert!(origin.origin.store().list().is_empty());
    origin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumable_upload_refuses_a_wrong_offset_and_resumes() {
    let ca = DevCa::new().unwrap();
    let origin = start_origin(&ca, |_| {}).await;
    let client = origin.client(&ca, Role::Proxy);
    let mut raw = client.raw();
    let namespace = ns("team/app");
    let data = blob((3 << 20) + 5, 3);
    let digest = Digest::of(&data);
    let chunk = |id: &str, offset: usize, end: usize| UploadChunksRequest {
        upload_id: id.to_owned(),
        offset: offset as u64,
        data: data.slice(offset..end),
    };

    let id = raw
        .start_upload(StartUploadRequest {
            namespace: namespace.to_string(),
        })
        .await
        .unwrap()
        .into_inner()
        .upload_id;
    let first = 1 << 20;
    let size = raw
        .upload_chunks(futures::stream::iter([chunk(&id, 0, first)]))
        .await
        .unwrap()
        .into_inner()
        .size;
    assert_eq!(size, first as u64);

    // A lost chunk: the next one starts too far.
    let status = raw
        .upload_chunks(futures::stream::iter([chunk(&id, first + 5, first + 10)]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains(&first.to_string()), "{status:?}");
    assert_eq!(
        status.metadata().get(UPLOAD_OFFSET).unwrap(),
        &first.to_string()
    );

    let resume_at = raw
        .get_upload_status(GetUploadStatusRequest {
            upload_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .size as usize;
    assert_eq!(resume_at, first);
    let rest = (resume_at..data.len())
        .step_by(CHUNK_SIZE)
        .map(|start| chunk(&id, start, (start + CHUNK_SIZE).min(data.len())))
        .collect::<Vec<_>>();
    let size = raw
        .upload_chunks(futures::stream::iter(rest))
        .await
        .unwrap()
        .into_inner()
        .size;
    assert_eq!(size, data.len() as u64);

    let committed = raw
        .commit_upload(CommitUploadRequest {
            upload_id: id.clone(),
            namespace: namespace.to_string(),
            digest: digest.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(committed.size, data.len() as u64);
    assert!(committed.created);
    let (downloaded, _) = collect(client.download(&namespace, &digest).await.unwrap()).await;
    assert!(downloaded == data[..]);

    // The upload is finished: its id is unknown now. A malformed id is a bad argument.
    let status = raw
        .get_upload_status(GetUploadStatusRequest { upload_id: id })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let status = raw
        .get_upload_status(GetUploadStatusRequest {
            upload_id: "not-an-id".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // Aborting discards an upload.
    let id = raw
        .start_upload(StartUploadRequest {
            namespace: namespace.to_string(),
        })
        .await
        .unwrap()
        .into_inner()
        .upload_id;
    raw.abort_upload(AbortUploadRequest {
        upload_id: id.clone(),
    })
    .await
    .unwrap();
    let status = raw
        .upload_chunks(futures::stream::iter([UploadChunksRequest {
            upload_id: id,
            offset: 0,
            data: Bytes::from_static(b"late"),
        }]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    origin.stop().await;
}

/// Reads `data`, then fails: a source (or a connection) cut mid-blob.
fn cut_after(data: Bytes) -> impl tokio::io::AsyncRead + Send + 'static {
    struct Cut;
    impl tokio::io::AsyncRead for Cut {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Err(std::io::Error::other("cut")))
        }
    }
    tokio::io::AsyncReadExt::chain(std::io::Cursor::new(data), Cut)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_resumable_resumes_at_the_origins_offset() {
    let ca = DevCa::new().unwrap();
    let origin = start_origin(&ca, |_| {}).await;
    let client = origin.client(&ca, Role::Origin);
    let namespace = ns("team/app");
    let size = (6 << 20) + 123;
    let data = blob(size, 12);
    let digest = Digest::of(&data);
    let mut cursor = UploadCursor::new(origin.name.clone());
    let sent = Arc::new(AtomicU64::new(0));

    // The first call loses its source a little after half the blob: final for the call, and
    // the origin keeps every whole chunk it received.
    let half = data.slice(..size / 2 + 1000);
    let error = upload_resumable(
        &client,
        &mut cursor,
        &namespace,
        &digest,
        size as u64,
        |_| {
            let half = half.clone();
            async move { Ok(cut_after(half)) }
        },
        None,
        &sent,
    )
    .await
    .unwrap_err();
    assert!(matches!(error, ClientError::Source(_)), "{error:?}");
    assert!(!cursor.upload_id.is_empty(), "the cursor keeps the upload");
    let held = client.upload_status(&cursor.upload_id).await.unwrap();
    assert_eq!(
        held,
        (size / 2) as u64 / CHUNK_SIZE as u64 * CHUNK_SIZE as u64
    );

    // The next call asks the origin where it stands and sends only the rest, every byte
    // through the pace given.
    let pace = BandwidthLimiter::new(Some(64_000_000), None);
    let opened_at = Arc::new(std::sync::Mutex::new(Vec::new()));
    let done = upload_resumable(
        &client,
        &mut cursor,
        &namespace,
        &digest,
        size as u64,
        |offset| {
            opened_at.lock().unwrap().push(offset);
            let rest = data.slice(offset as usize..);
            async move { Ok(std::io::Cursor::new(rest)) }
        },
        Some(&pace),
        &sent,
    )
    .await
    .unwrap();
    assert_eq!(*opened_at.lock().unwrap(), [held]);
    let paced = pace.stats().egress.unwrap();
    assert_eq!(paced.bytes, size as u64 - held);
    assert!(
        paced.delay > Duration::ZERO,
        "the cap held the transfer back"
    );
    assert_eq!(done.resumed_at, held);
    assert!(done.uploaded.created);
    assert_eq!(done.uploaded.size, size as u64);
    assert_eq!(
        cursor,
        UploadCursor::new(origin.name.clone()),
        "finished: reset"
    );
    // Every byte went once, plus the partial chunk the cut lost; not twice the blob.
    let sent = sent.load(Ordering::Relaxed);
    assert!(
        sent >= size as u64 && sent < size as u64 + CHUNK_SIZE as u64,
        "{sent} bytes sent for {size}"
    );
    let (downloaded, _) = collect(client.download(&namespace, &digest).await.unwrap()).await;
    assert!(downloaded == data[..]);
    origin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uploads_of_the_same_blob_both_succeed() {
    let ca = DevCa::new().unwrap();
    let origin = start_origin(&ca, |_| {}).await;
    let (a, b) = (
        origin.client(&ca, Role::Proxy),
        origin.client(&ca, Role::Client),
    );
    let namespace = ns("library/ubuntu");
    let data = blob(4 << 20, 4);
    let (first, second) =
        tokio::join!(upload(&a, &namespace, &data), upload(&b, &namespace, &data));
    assert_eq!(first.size, data.len() as u64);
    assert_eq!(second.size, data.len() as u64);
    assert!(
        first.created ^ second.created,
        "exactly one stored it: {first:?} {second:?}"
    );
    assert_eq!(origin.origin.store().list(), vec![Digest::of(&data)]);
    let (downloaded, _) = collect(a.download(&namespace, &Digest::of(&data)).await.unwrap()).await;
    assert!(downloaded == data[..]);
    origin.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Metadata

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stat_and_metainfo_describe_the_blob() {
    let ca = DevCa::new().unwrap();
    let origin = start_origin(&ca, |_| {}).await;
    let writer = origin.client(&ca, Role::Proxy);
    let reader = origin.client(&ca, Role::Tracker);
    let namespace = ns("library/ubuntu");
    let data = blob((2 << 20) + 999, 5);
    let digest = Digest::of(&data);
    upload(&writer, &namespace, &data).await;

    // The write-back runs from the durable queue right after the upload is acknowledged.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let stat = loop {
        let stat = reader.stat(&namespace, &digest).await.unwrap().unwrap();
        if stat.persisted || tokio::time::Instant::now() > deadline {
            break stat;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(stat.size, data.len() as u64);
    assert!(stat.local && stat.persisted, "{stat:?}");
    assert_eq!(
        reader.stat(&namespace, &Digest::of(b"nope")).await.unwrap(),
        None
    );

    let metainfo = reader.get_metainfo(&namespace, &digest).await.unwrap();
    assert_eq!(metainfo.digest(), &digest);
    assert_eq!(metainfo.length(), data.len() as u64);
    assert!(metainfo.num_pieces() > 1, "{metainfo:?}");
    for index in 0..metainfo.num_pieces() {
        let start = metainfo.piece_offset(index) as usize;
        let len = metainfo.piece_len(index).unwrap() as usize;
        metainfo
            .verify_piece(index, &data[start..start + len])
            .unwrap();
    }
    let mut tampered = data[..metainfo.piece_len(0).unwrap() as usize].to_vec();
    tampered[0] ^= 1;
    assert!(metainfo.verify_piece(0, &tampered).is_err());

    // Delete (an origin's own maintenance call) removes the local copy only; the backend
    // keeps it.
    let mut raw = origin.client(&ca, Role::Origin).raw();
    raw.delete(DeleteRequest {
        namespace: namespace.to_string(),
        digest: digest.to_string(),
    })
    .await
    .unwrap();
    assert!(!origin.origin.store().contains(&digest));
    let status = raw
        .stat(StatRequest {
            namespace: namespace.to_string(),
            digest: digest.to_string(),
            local_only: true,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let stat = reader.stat(&namespace, &digest).await.unwrap().unwrap();
    assert!(!stat.local && stat.persisted, "{stat:?}");
    origin.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Blobs only the backend has

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_only_in_the_backend_is_fetched_then_served() {
    let ca = DevCa::new().unwrap();
    let origin = start_origin(&ca, |_| {}).await;
    let client = origin.client(&ca, Role::Agent);
    let namespace = ns("library/debian");
    let data = blob((3 << 20) + 77, 6);
    let digest = put_in_backend(&origin.backend(), &namespace, &data).await;

    let status = client
        .raw()
        .get_meta_info(GetMetaInfoRequest {
            namespace: namespace.to_string(),
            digest: digest.to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let retry_after: u64 = status
        .metadata()
        .get(RETRY_AFTER_MS)
        .expect("retry-after-ms")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after > 0);

    // Poll as told until the metainfo is served.
    let metainfo = loop {
        match client.get_metainfo(&namespace, &digest).await {
            Ok(metainfo) => break metainfo,
            Err(ClientError::Retry(after)) => tokio::time::sleep(after).await,
            Err(other) => panic!("{other}"),
        }
    };
    assert_eq!(metainfo.digest(), &digest);
    assert_eq!(metainfo.length(), data.len() as u64);
    let (downloaded, _) = collect(client.download(&namespace, &digest).await.unwrap()).await;
    assert!(downloaded == data[..]);
    let info = origin.origin.store().stat(&digest).await.unwrap().unwrap();
    assert!(!info.persist, "a copy of a backend blob is not pinned");

    // Download (and prefetch) start the fetch too.
    let other = blob(100_000, 7);
    let other_digest = Digest::of(&other);
    origin
        .backend()
        .upload(
            &namespace,
            &other_digest,
            UploadSource::Reader(Box::pin(std::io::Cursor::new(other.clone()))),
            other.len() as u64,
        )
        .await
        .unwrap();
    match client.download(&namespace, &other_digest).await {
        Err(ClientError::Retry(_)) => {}
        Err(error) => panic!("{error}"),
        Ok(_) => panic!("served before fetched"),
    }
    let prefetch = || {
        let mut raw = client.raw();
        let request = PrefetchRequest {
            namespace: namespace.to_string(),
            digest: other_digest.to_string(),
        };
        async move { raw.prefetch(request).await.unwrap().into_inner().cached }
    };
    let mut cached = prefetch().await;
    for _ in 0..200 {
        if cached {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        cached = prefetch().await;
    }
    assert!(cached, "prefetch reports the blob cached once fetched");
    let (downloaded, _) = collect(client.download(&namespace, &other_digest).await.unwrap()).await;
    assert!(downloaded == other[..]);
    origin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_blob_is_not_found_with_a_clear_message() {
    let ca = DevCa::new().unwrap();
    let origin = start_origin(&ca, |_| {}).await;
    let client = origin.client(&ca, Role::Tracker);
    let namespace = ns("library/ubuntu");
    let digest = Digest::of(b"never uploaded");
    let expected = format!(
        "blob {digest} not found in namespace library/ubuntu: not on this origin nor in its \
         backend"
    );
    let status = status_of(client.get_metainfo(&namespace, &digest).await.unwrap_err());
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), expected);
    let status = client
        .raw()
        .download(DownloadRequest {
            namespace: namespace.to_string(),
            digest: digest.to_string(),
            offset: 0,
            length: None,
        })
        .await
        .expect_err("not found");
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), expected);
    origin.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Write-back

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_back_keeps_the_upload_pinned() {
    let ca = DevCa::new().unwrap();
    let blocker = tempfile::NamedTempFile::new().unwrap();
    // The backend root is a file: every write to it fails.
    let root = blocker.path().to_owned();
    let origin = start_origin(&ca, |config| {
        config.backends = vec![fs_rule(".*", &root)];
    })
    .await;
    let client = origin.client(&ca, Role::Proxy);
    let namespace = ns("library/ubuntu");
    let data = blob(1 << 20, 8);
    let uploaded = upload(&client, &namespace, &data).await;
    assert!(
        uploaded.created,
        "acknowledged although the backend is broken"
    );
    let info = origin
        .origin
        .store()
        .stat(&uploaded.digest)
        .await
        .unwrap()
        .unwrap();
    assert!(info.persist, "pinned until written back");
    let mut raw = client.raw();
    let stat = raw
        .stat(StatRequest {
            namespace: namespace.to_string(),
            digest: uploaded.digest.to_string(),
            local_only: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(stat.local && !stat.persisted, "{stat:?}");
    // Deleting the only copy is refused.
    let status = origin
        .client(&ca, Role::Origin)
        .raw()
        .delete(DeleteRequest {
            namespace: namespace.to_string(),
            digest: uploaded.digest.to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(origin.origin.store().contains(&uploaded.digest));
    origin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_cannot_be_set_up_fails_at_start_up() {
    let ca = DevCa::new().unwrap();
    let (mut config, listener, _dir) = origin_config().await;
    config.backends.insert(
        0,
        BackendConfig {
            namespace: Pattern::new("^team/").unwrap(),
            backend: BackendKind::S3(S3BackendConfig {
                username: "nobody".to_owned(),
                ..S3BackendConfig::default()
            }),
            bandwidth: BackendBandwidthConfig::default(),
        },
    );
    let error = Origin::start(config, tls(&ca, Role::Origin), listener)
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("backends[0]: cannot set up the `s3` backend"),
        "{error}"
    );
}

// ---------------------------------------------------------------------------------------------
// Cluster identity

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locations_follow_the_ring_over_the_static_cluster() {
    let ca = DevCa::new().unwrap();
    let origin = start_origin(&ca, |config| {
        let me = config.name.clone();
        config.cluster.hosts.static_hosts = vec![
            me,
            "origin2.example:15002".into(),
            "origin3.example:15002".into(),
        ];
        config.hashring.max_replica = 2;
        config
            .hashring
            .weights
            .insert("origin3.example:15002".into(), 250);
    })
    .await;
    let ring = Ring::new([
        Member::new(origin.name.clone(), 100),
        Member::new("origin2.example:15002", 100),
        Member::new("origin3.example:15002", 250),
    ]);
    let client = origin.client(&ca, Role::Tracker);
    let mut seen = std::collections::HashSet::new();
    for i in 0..20u32 {
        let digest = Digest::of(&i.to_le_bytes());
        let locations = client.locations(&digest).await.unwrap();
        let expected: Vec<String> = ring
            .owners(&digest, 2)
            .into_iter()
            .map(|member| member.label.clone())
            .collect();
        let got: Vec<String> = locations.iter().map(|l| l.address.clone()).collect();
        assert_eq!(got, expected, "{digest}");
        assert!(locations.iter().all(|l| l.healthy));
        seen.extend(got);
    }
    assert_eq!(seen.len(), 3, "every member owns something: {seen:?}");
    origin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_context_is_the_seeder_identity() {
    let ca = DevCa::new().unwrap();
    let origin = start_origin(&ca, |_| {}).await;
    let (peer, name) = origin
        .client(&ca, Role::Tracker)
        .peer_context()
        .await
        .unwrap();
    assert_eq!(name, origin.name);
    assert_eq!(&peer, origin.origin.peer());
    assert_eq!(peer.peer_id, PeerId::from_name(&origin.name));
    assert!(peer.origin);
    assert_eq!(peer.addr.ip().to_string(), "127.0.0.1");
    assert_eq!(peer.addr.port(), origin.origin.p2p_addr().port());
    origin.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Roles and the rest of the surface

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_limit_what_a_caller_may_do() {
    let ca = DevCa::new().unwrap();
    let origin = start_origin(&ca, |_| {}).await;
    let agent = origin.client(&ca, Role::Agent);
    let namespace = ns("library/ubuntu");
    let data = blob(1000, 9);
    let error = agent
        .upload(
            &namespace,
            &Digest::of(&data),
            std::io::Cursor::new(data.clone()),
            None,
        )
        .await
        .unwrap_err();
    let status = status_of(error);
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("agent"), "{status:?}");
    assert!(origin.origin.store().list().is_empty());
    let status = agent
        .raw()
        .start_upload(StartUploadRequest {
            namespace: namespace.to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    // Reading is fine for an agent.
    let status = status_of(
        agent
            .get_metainfo(&namespace, &Digest::of(&data))
            .await
            .unwrap_err(),
    );
    assert_eq!(status.code(), Code::NotFound);
    origin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_and_delete_are_refused_to_every_role_but_origin() {
    let ca = DevCa::new().unwrap();
    let origin = start_origin(&ca, |_| {}).await;
    let namespace = ns("library/ubuntu");
    let data = blob(1000, 12);
    let digest = Digest::of(&data);
    origin
        .client(&ca, Role::Proxy)
        .upload(&namespace, &digest, std::io::Cursor::new(data), None)
        .await
        .unwrap();
    for role in Role::ALL.into_iter().filter(|r| *r != Role::Origin) {
        let mut raw = origin.client(&ca, role).raw();
        let (delete, duplicate) =
            delete_and_duplicate_refusals(&mut raw, &namespace, &digest).await;
        assert_eq!(delete.code(), Code::PermissionDenied, "{role}: {delete:?}");
        assert!(
            delete.message().contains(&format!("`{role}`")),
            "{delete:?}"
        );
        assert_eq!(
            duplicate.code(),
            Code::PermissionDenied,
            "{role}: {duplicate:?}"
        );
    }
    // Nothing was removed or planted.
    assert!(!origin.origin.store().contains(&planted()));
    assert!(origin.origin.store().contains(&digest));
    assert_eq!(origin.origin.store().list().len(), 1);
    origin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_are_stored_and_an_unconfigured_remote_is_refused() {
    let ca = DevCa::new().unwrap();
    let origin = start_origin(&ca, |_| {}).await;
    let mut raw = origin.client(&ca, Role::Origin).raw();
    let namespace = ns("library/ubuntu");
    let data = blob((1 << 20) + 10, 10);
    let digest = Digest::of(&data);
    let duplicate = |delay: Option<prost_types::Duration>| {
        let header = DuplicateRequest {
            part: Some(duplicate_request::Part::Header(DuplicateHeader {
                namespace: namespace.to_string(),
                digest: digest.to_string(),
                size: Some(data.len() as u64),
                write_back_delay: delay,
            })),
        };
        let chunks = [data.slice(..1 << 20), data.slice(1 << 20..)].map(|chunk| DuplicateRequest {
            part: Some(duplicate_request::Part::Chunk(chunk)),
        });
        futures::stream::iter(std::iter::once(header).chain(chunks))
    };
    let delay = prost_types::Duration {
        seconds: 1800,
        nanos: 0,
    };
    assert!(
        raw.duplicate(duplicate(Some(delay)))
            .await
            .unwrap()
            .into_inner()
            .created
    );
    assert!(
        !raw.duplicate(duplicate(None))
            .await
            .unwrap()
            .into_inner()
            .created
    );
    let info = origin.origin.store().stat(&digest).await.unwrap().unwrap();
    assert!(info.persist, "a replica due to write back later is pinned");
    assert!(
        files_under(&origin.backend_root).is_empty(),
        "a replica does not write back (yet)"
    );

    // A remote is named, never addressed: a name this origin was not configured with is
    // refused before anything is dialed.
    let status = raw
        .replicate_to_remote(ReplicateToRemoteRequest {
            namespace: namespace.to_string(),
            digest: digest.to_string(),
            remote_cluster: "remote-origin:15002".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("`remote-origin:15002` is not a remote of this origin (configured: none)"),
        "{status:?}"
    );
    origin.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Seeding over QUIC

/// A tracker that knows one seeder.
struct OneSeeder(PeerInfo);

#[async_trait]
impl Announcer for OneSeeder {
    async fn announce(
        &self,
        _namespace: &Namespace,
        _digest: &Digest,
        _me: &PeerInfo,
    ) -> Result<AnnounceReply, AnnounceError> {
        Ok(AnnounceReply {
            peers: vec![self.0],
            interval: Duration::from_millis(200),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_seeds_an_uploaded_blob_to_an_agent() {
    let ca = DevCa::new().unwrap();
    let origin = start_origin(&ca, |_| {}).await;
    let client = origin.client(&ca, Role::Proxy);
    let namespace = ns("library/ubuntu");
    let data = blob(6 << 20, 11);
    let digest = Digest::of(&data);
    upload(&client, &namespace, &data).await;
    let metainfo = client.get_metainfo(&namespace, &digest).await.unwrap();

    let agent_dir = tempfile::tempdir().unwrap();
    let agent_store = BlobStore::open(StoreConfig {
        dir: agent_dir.path().to_owned(),
        ..StoreConfig::default()
    })
    .await
    .unwrap();
    let endpoint = PeerEndpoint::bind(
        "127.0.0.1:0".parse().unwrap(),
        &tls(&ca, Role::Agent),
        &QuicTuning::default(),
    )
    .unwrap();
    let local = PeerInfo {
        peer_id: PeerId::random(),
        addr: endpoint.local_addr().unwrap(),
        complete: false,
        origin: false,
    };
    let agent = Scheduler::start(
        local,
        DriverConfig::default(),
        endpoint,
        agent_store.clone(),
        BandwidthLimiter::unlimited(),
        Some(Arc::new(OneSeeder(*origin.origin.peer()))),
    );
    let mut download = agent.download(&namespace, &metainfo).await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), download.wait())
        .await
        .expect("download finished in time")
        .unwrap();
    let copy = agent_store
        .read_range(&digest, 0, data.len() as u64)
        .await
        .unwrap();
    assert!(copy == data, "the agent's copy matches");
    agent.shutdown().await;
    origin.stop().await;
}

/// An origin on loopback in a ring whose other members are on other hosts refuses to start:
/// the trackers would hand its loopback address to agents everywhere. Nothing is dialled.
#[tokio::test]
async fn an_origin_refuses_to_advertise_loopback_to_a_ring_on_other_hosts() {
    let ca = DevCa::new().unwrap();
    let (mut config, listener, _dir) = origin_config().await;
    // TEST-NET-1 (RFC 5737): never routed, and never dialled by this test.
    config
        .cluster
        .hosts
        .static_hosts
        .push("192.0.2.11:15002".to_owned());
    let error = Origin::start(config, tls(&ca, Role::Origin), listener)
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("127.0.0.1") && message.contains("192.0.2.11:15002"),
        "{message}"
    );
    assert!(message.contains("peer_ip"), "says what to set: {message}");
}
