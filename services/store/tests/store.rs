//! Behaviour of the blob store through its public API, on real temporary directories.

// Helpers here are not `#[test]` functions, which clippy's `allow-unwrap-in-tests` misses; in a
// test a panic is a failed assertion.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use bytesize::ByteSize;
use futures::TryStreamExt;
use kraken_config::store::{CleanupConfig, StoreConfig};
use kraken_core::{Digest, MetaInfo, PieceError, PieceHashAlgorithm};
use kraken_store::{
    BlobStore, Clock, CommitOptions, CommitOutcome, DownloadState, ManualClock, StoreError,
    UploadId,
};
use tokio_util::sync::CancellationToken;

const HOUR: Duration = Duration::from_secs(3600);
const MINUTE: Duration = Duration::from_secs(60);

fn blob(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

fn config(dir: &Path) -> StoreConfig {
    let cleanup = CleanupConfig {
        enable: true,
        tti: HOUR,
        interval: 10 * MINUTE,
    };
    StoreConfig {
        dir: dir.to_path_buf(),
        capacity: ByteSize(0),
        cache_cleanup: cleanup.clone(),
        upload_cleanup: cleanup.clone(),
        download_cleanup: cleanup,
    }
}

async fn open(dir: &Path) -> BlobStore {
    BlobStore::open(config(dir)).await.unwrap()
}

async fn open_with(config: StoreConfig, clock: &ManualClock) -> BlobStore {
    BlobStore::open_with_clock(config, Arc::new(clock.clone()))
        .await
        .unwrap()
}

fn entry_dir(root: &Path, digest: &Digest) -> PathBuf {
    let hex = digest.hex();
    root.join("cache")
        .join(&hex[..2])
        .join(&hex[2..4])
        .join(&hex)
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    found.sort();
    found
}

async fn read_all(store: &BlobStore, digest: &Digest) -> Vec<u8> {
    let reader = store.open_blob(digest).await.unwrap();
    let size = reader.size();
    reader.read_at(0, size).await.unwrap().to_vec()
}

async fn put(store: &BlobStore, data: &[u8]) -> Digest {
    let digest = Digest::of(data);
    store
        .put_bytes(&digest, data.to_vec(), &CommitOptions::default())
        .await
        .unwrap();
    digest
}

fn small_pieces() -> CommitOptions {
    CommitOptions {
        piece_lengths: kraken_core::PieceLengthPolicy::new([(0, 1000)]).unwrap(),
        ..CommitOptions::default()
    }
}

#[tokio::test]
async fn chunked_upload_with_right_digest_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let data = blob(5_500, 1);
    let digest = Digest::of(&data);

    let id = store.create_upload().await.unwrap();
    let mut offset = 0;
    for chunk in data.chunks(2_000) {
        offset = store
            .write_upload(&id, offset, Bytes::copy_from_slice(chunk))
            .await
            .unwrap();
    }
    assert_eq!(store.upload_size(&id).await.unwrap(), 5_500);
    let outcome = store
        .commit_upload(&id, &digest, &small_pieces())
        .await
        .unwrap();
    let CommitOutcome::Stored(metainfo) = outcome else {
        panic!("expected Stored: {outcome:?}")
    };
    assert_eq!(*metainfo.digest(), digest);
    assert_eq!((metainfo.length(), metainfo.num_pieces()), (5_500, 6));

    assert_eq!(read_all(&store, &digest).await, data);
    assert_eq!(
        store.read_range(&digest, 100, 50).await.unwrap(),
        &data[100..150]
    );
    assert!(matches!(
        store.read_range(&digest, 5_000, 501).await,
        Err(StoreError::RangeOutOfBounds { size: 5_500, .. })
    ));
    let streamed: Vec<Bytes> = store
        .open_blob(&digest)
        .await
        .unwrap()
        .into_stream(10, 5_000)
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(streamed.concat(), &data[10..5_010]);

    let info = store.stat(&digest).await.unwrap().unwrap();
    assert_eq!((info.size, info.persist), (5_500, false));
    assert_eq!(info.metainfo.as_ref(), Some(&metainfo));
    assert_eq!(store.metainfo(&digest).await.unwrap(), Some(metainfo));
    assert_eq!(store.list(), vec![digest]);
    assert_eq!(store.stored_bytes(), 5_500);
    assert_eq!(
        fs::read(entry_dir(dir.path(), &digest).join("data")).unwrap(),
        data
    );
    assert!(entries(&dir.path().join("uploads")).is_empty());
    // The upload is finished.
    assert!(matches!(
        store.upload_size(&id).await,
        Err(StoreError::UploadNotFound(_))
    ));
}

#[tokio::test]
async fn wrong_digest_stores_nothing_and_removes_staging() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let data = blob(3_000, 2);
    let claimed = Digest::of(b"something else");

    let id = store.create_upload().await.unwrap();
    store
        .write_upload(&id, 0, Bytes::from(data.clone()))
        .await
        .unwrap();
    let error = store
        .commit_upload(&id, &claimed, &CommitOptions::default())
        .await
        .unwrap_err();
    match error {
        StoreError::DigestMismatch { expected, actual } => {
            assert_eq!(expected, claimed);
            assert_eq!(actual, Digest::of(&data));
        }
        other => panic!("expected DigestMismatch, got {other:?}"),
    }
    assert!(store.list().is_empty());
    assert!(!store.contains(&Digest::of(&data)));
    assert!(store.stat(&claimed).await.unwrap().is_none());
    assert!(
        entries(&dir.path().join("uploads")).is_empty(),
        "staging removed"
    );
    assert!(
        entries(&dir.path().join("cache")).is_empty(),
        "nothing in the cache"
    );
    assert!(matches!(
        store
            .write_upload(&id, 3_000, Bytes::from_static(b"x"))
            .await,
        Err(StoreError::UploadNotFound(_))
    ));
}

#[tokio::test]
async fn chunk_at_wrong_offset_is_refused_with_the_offset_to_resume_from() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let data = blob(1_000, 3);
    let id = store.create_upload().await.unwrap();
    store
        .write_upload(&id, 0, Bytes::copy_from_slice(&data[..400]))
        .await
        .unwrap();

    // A gap (lost chunk) and an overlap (repeated chunk) are both refused.
    for bad in [600, 200] {
        match store
            .write_upload(&id, bad, Bytes::copy_from_slice(&data[400..]))
            .await
        {
            Err(StoreError::WrongOffset {
                upload,
                expected: 400,
                got,
            }) => {
                assert_eq!((upload, got), (id, bad));
            }
            other => panic!("expected WrongOffset, got {other:?}"),
        }
    }
    assert_eq!(
        store.upload_size(&id).await.unwrap(),
        400,
        "refused chunks wrote nothing"
    );
    store
        .write_upload(&id, 400, Bytes::copy_from_slice(&data[400..]))
        .await
        .unwrap();
    store
        .commit_upload(&id, &Digest::of(&data), &CommitOptions::default())
        .await
        .unwrap();
    assert_eq!(read_all(&store, &Digest::of(&data)).await, data);

    // Ids come from clients: a forged or unknown one is an error, never a path.
    assert!("../../cache".parse::<UploadId>().is_err());
    let unknown = UploadId::random();
    assert!(matches!(
        store.abort_upload(&unknown).await,
        Err(StoreError::UploadNotFound(_))
    ));
}

#[tokio::test]
async fn aborted_upload_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let id = store.create_upload().await.unwrap();
    store
        .write_upload(&id, 0, Bytes::from_static(b"partial"))
        .await
        .unwrap();
    store.abort_upload(&id).await.unwrap();
    assert!(entries(&dir.path().join("uploads")).is_empty());
    assert!(matches!(
        store.upload_size(&id).await,
        Err(StoreError::UploadNotFound(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commits_of_one_digest_all_succeed_with_one_copy() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let data = Bytes::from(blob(300_000, 4));
    let digest = Digest::of(&data);

    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (store, data) = (store.clone(), data.clone());
        tasks.push(tokio::spawn(async move {
            let id = store.create_upload().await.unwrap();
            // Several chunks each, so the writers interleave.
            let mut offset = 0;
            for chunk in data.chunks(64 * 1024) {
                offset = store
                    .write_upload(&id, offset, data.slice_ref(chunk))
                    .await
                    .unwrap();
            }
            store
                .commit_upload(&id, &digest, &CommitOptions::default())
                .await
        }));
    }
    let mut stored = 0;
    for task in tasks {
        match task.await.unwrap().unwrap() {
            CommitOutcome::Stored(metainfo) => {
                stored += 1;
                assert_eq!(*metainfo.digest(), digest);
            }
            CommitOutcome::AlreadyExists(metainfo) => assert_eq!(*metainfo.digest(), digest),
        }
    }
    assert_eq!(stored, 1, "exactly one writer stores the blob");
    assert_eq!(store.list(), vec![digest]);
    assert_eq!(store.stored_bytes(), data.len() as u64);
    assert_eq!(read_all(&store, &digest).await, data);
    let shard = entry_dir(dir.path(), &digest)
        .parent()
        .unwrap()
        .to_path_buf();
    assert_eq!(entries(&shard).len(), 1, "one copy on disk");
    assert_eq!(
        entries(&entry_dir(dir.path(), &digest)),
        vec![
            entry_dir(dir.path(), &digest).join("data"),
            entry_dir(dir.path(), &digest).join("meta")
        ]
    );
    assert!(entries(&dir.path().join("uploads")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_readers_keep_reading_through_eviction_and_deletion() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.capacity = ByteSize(250_000);
    let store = BlobStore::open(config).await.unwrap();
    let first = blob(100_000, 5);
    let a = put(&store, &first).await;
    let reader = store.open_blob(&a).await.unwrap();
    let stream = store
        .open_blob(&a)
        .await
        .unwrap()
        .into_stream(0, 100_000)
        .unwrap();

    // Two more blobs push the total over capacity: `a` is the least recently used.
    let b = put(&store, &blob(100_000, 6)).await;
    let c = put(&store, &blob(100_000, 7)).await;
    assert!(!store.contains(&a), "a was evicted");
    assert!(store.contains(&b) && store.contains(&c));
    assert!(!entry_dir(dir.path(), &a).exists());
    assert!(matches!(store.open_blob(&a).await, Err(StoreError::NotFound(d)) if d == a));

    assert_eq!(reader.read_at(0, 100_000).await.unwrap(), &first[..]);
    let streamed: Vec<Bytes> = stream.try_collect().await.unwrap();
    assert_eq!(streamed.concat(), first);

    // Many concurrent readers of a blob that gets deleted under them.
    let content = blob(100_000, 6);
    let mut readers = Vec::new();
    for _ in 0..16 {
        readers.push(store.open_blob(&b).await.unwrap());
    }
    store.delete(&b).await.unwrap();
    assert!(!store.contains(&b));
    let tasks: Vec<_> = readers
        .into_iter()
        .map(|reader| tokio::spawn(async move { reader.read_at(0, 100_000).await.unwrap() }))
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), &content[..]);
    }
    assert!(matches!(
        store.delete(&b).await,
        Err(StoreError::NotFound(_))
    ));
}

#[tokio::test]
async fn eviction_follows_lru_order_and_never_touches_pinned_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.capacity = ByteSize(3_000);
    let store = BlobStore::open(config).await.unwrap();
    let pinned = CommitOptions::default().persist(true);

    let a = put(&store, &blob(1_000, 10)).await;
    put(&store, &blob(1_000, 11)).await;
    let c_data = blob(1_000, 12);
    let c = Digest::of(&c_data);
    store.put_bytes(&c, c_data, &pinned).await.unwrap();
    read_all(&store, &a).await; // recency, oldest first: b, a (c is pinned)

    let d = put(&store, &blob(1_000, 13)).await;
    assert_eq!(store.list(), sorted([a, c, d]), "b was least recently used");
    let e = put(&store, &blob(1_000, 14)).await;
    assert_eq!(store.list(), sorted([c, d, e]), "then a");
    assert_eq!(store.stored_bytes(), 3_000);

    // With everything else pinned the store goes over capacity rather than drop a pinned blob
    // (or the one just stored).
    store.set_persist(&d, true).await.unwrap();
    store.set_persist(&e, true).await.unwrap();
    let f = put(&store, &blob(1_000, 15)).await;
    assert_eq!(store.list(), sorted([c, d, e, f]));
    assert_eq!(store.stored_bytes(), 4_000);
    assert!(store.stat(&c).await.unwrap().unwrap().persist);

    // Unpinning makes a blob evictable again, immediately.
    store.set_persist(&d, false).await.unwrap();
    assert_eq!(store.list(), sorted([c, e, f]));
    assert!(store.contains(&c), "pinned blob survived every pass");
}

fn sorted<const N: usize>(mut digests: [Digest; N]) -> Vec<Digest> {
    digests.sort();
    digests.to_vec()
}

#[tokio::test]
async fn restart_discards_leftovers_and_keeps_good_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let good = blob(2_000, 20);
    let pinned = blob(1_500, 21);
    let (good_digest, pinned_digest) = (Digest::of(&good), Digest::of(&pinned));
    {
        let store = open(root).await;
        put(&store, &good).await;
        store
            .put_bytes(
                &pinned_digest,
                pinned.clone(),
                &CommitOptions::default().persist(true),
            )
            .await
            .unwrap();
        // A partial upload and a partial download, as a crash would leave them.
        let id = store.create_upload().await.unwrap();
        store
            .write_upload(&id, 0, Bytes::from_static(b"half of something"))
            .await
            .unwrap();
        let partial = blob(5_000, 22);
        let metainfo = MetaInfo::generate(&partial[..], 1_000, PieceHashAlgorithm::Blake3).unwrap();
        let download = store.begin_download(&metainfo).await.unwrap();
        download
            .write_piece(1, Bytes::copy_from_slice(&partial[1_000..2_000]))
            .await
            .unwrap();
    }
    assert_eq!(entries(&root.join("uploads")).len(), 1);
    assert_eq!(entries(&root.join("downloads")).len(), 1);

    // Damage of every kind.
    let garbage_meta = Digest::of(b"garbage meta");
    let dir_gm = entry_dir(root, &garbage_meta);
    fs::create_dir_all(&dir_gm).unwrap();
    fs::write(dir_gm.join("data"), b"whatever").unwrap();
    fs::write(dir_gm.join("meta"), b"{not json").unwrap();

    let missing_data = Digest::of(b"missing data");
    let dir_md = entry_dir(root, &missing_data);
    fs::create_dir_all(&dir_md).unwrap();
    let good_meta = fs::read_to_string(entry_dir(root, &good_digest).join("meta")).unwrap();
    fs::write(
        dir_md.join("meta"),
        good_meta.replace(&good_digest.hex(), &missing_data.hex()),
    )
    .unwrap();

    let truncated = Digest::of(b"truncated");
    let dir_tr = entry_dir(root, &truncated);
    fs::create_dir_all(&dir_tr).unwrap();
    fs::write(
        dir_tr.join("meta"),
        good_meta.replace(&good_digest.hex(), &truncated.hex()),
    )
    .unwrap();
    fs::write(dir_tr.join("data"), &good[..100]).unwrap();

    let misplaced = entry_dir(root, &good_digest)
        .parent()
        .unwrap()
        .join("not-a-digest");
    fs::create_dir_all(&misplaced).unwrap();
    fs::write(root.join("cache").join("zz"), b"stray").unwrap();
    fs::write(root.join("tmp").join("half-written-meta"), b"{").unwrap();
    fs::write(entry_dir(root, &good_digest).join("meta.tmp"), b"{").unwrap();

    let store = open(root).await;
    assert_eq!(store.list(), sorted([good_digest, pinned_digest]));
    assert_eq!(read_all(&store, &good_digest).await, good);
    assert_eq!(read_all(&store, &pinned_digest).await, pinned);
    assert!(
        store.stat(&pinned_digest).await.unwrap().unwrap().persist,
        "pin survives restart"
    );
    assert!(
        store
            .stat(&good_digest)
            .await
            .unwrap()
            .unwrap()
            .metainfo
            .is_some()
    );
    for gone in [
        &dir_gm,
        &dir_md,
        &dir_tr,
        &misplaced,
        &root.join("cache").join("zz"),
    ] {
        assert!(
            !gone.exists(),
            "{} should have been removed",
            gone.display()
        );
    }
    assert!(!entry_dir(root, &good_digest).join("meta.tmp").exists());
    assert!(entries(&root.join("uploads")).is_empty());
    assert!(entries(&root.join("downloads")).is_empty());
    assert!(entries(&root.join("tmp")).is_empty());
    assert_eq!(store.stored_bytes(), 3_500);
}

#[tokio::test]
async fn idle_cleanup_removes_only_what_idled_past_its_tti() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::default();
    let store = open_with(config(dir.path()), &clock).await;
    let start = clock.now();

    let a = put(&store, &blob(100, 30)).await;
    let b = put(&store, &blob(100, 31)).await;
    let c_data = blob(100, 32);
    let c = Digest::of(&c_data);
    store
        .put_bytes(&c, c_data, &CommitOptions::default().persist(true))
        .await
        .unwrap();
    let stale_upload = store.create_upload().await.unwrap();
    store
        .write_upload(&stale_upload, 0, Bytes::from_static(b"abc"))
        .await
        .unwrap();
    let data = blob(3_000, 33);
    let metainfo = MetaInfo::generate(&data[..], 1_000, PieceHashAlgorithm::Blake3).unwrap();
    let stale_download = store.begin_download(&metainfo).await.unwrap();
    stale_download
        .write_piece(0, Bytes::copy_from_slice(&data[..1_000]))
        .await
        .unwrap();

    clock.advance(30 * MINUTE);
    read_all(&store, &b).await;
    clock.advance(45 * MINUTE);
    let fresh_upload = store.create_upload().await.unwrap();
    store
        .write_upload(&fresh_upload, 0, Bytes::from_static(b"abc"))
        .await
        .unwrap();
    let other = blob(2_000, 34);
    let fresh_metainfo = MetaInfo::generate(&other[..], 1_000, PieceHashAlgorithm::Blake3).unwrap();
    let fresh_download = store.begin_download(&fresh_metainfo).await.unwrap();

    // 75 minutes in: a (75m), the stale upload and download (75m) are past the 1h TTI; b was
    // read 45m ago; c is pinned.
    let report = store.cleanup_idle(clock.now()).await;
    assert_eq!((report.cache_blobs, report.cache_bytes), (1, 100));
    assert_eq!((report.uploads, report.downloads), (1, 1));
    assert_eq!(store.list(), sorted([b, c]));
    assert!(!entry_dir(dir.path(), &a).exists());
    assert!(matches!(
        store
            .write_upload(&stale_upload, 3, Bytes::from_static(b"d"))
            .await,
        Err(StoreError::UploadNotFound(_))
    ));
    assert_eq!(store.upload_size(&fresh_upload).await.unwrap(), 3);
    assert_eq!(stale_download.state(), DownloadState::Aborted);
    assert!(matches!(
        stale_download
            .write_piece(1, Bytes::copy_from_slice(&data[1_000..2_000]))
            .await,
        Err(StoreError::DownloadClosed {
            state: DownloadState::Aborted,
            ..
        })
    ));
    assert_eq!(fresh_download.state(), DownloadState::Downloading);
    assert_eq!(entries(&dir.path().join("uploads")).len(), 1);
    assert_eq!(entries(&dir.path().join("downloads")).len(), 1);

    // A pinned blob survives any idle time; an unpinned one goes once it idles.
    let report = store.cleanup_idle(start + 100 * HOUR).await;
    assert_eq!(report.cache_blobs, 1);
    assert_eq!(store.list(), vec![c]);

    // A disabled sweep removes nothing.
    let mut config = config(dir.path());
    config.cache_cleanup.enable = false;
    drop(store);
    let store = open_with(config, &clock).await;
    store.set_persist(&c, false).await.unwrap();
    assert_eq!(store.cleanup_idle(start + 1000 * HOUR).await.cache_blobs, 0);
    assert_eq!(store.list(), vec![c]);
}

#[tokio::test(start_paused = true)]
async fn background_cleanup_runs_every_interval_until_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::default();
    let store = open_with(config(dir.path()), &clock).await;
    let a = put(&store, &blob(100, 40)).await;
    let shutdown = CancellationToken::new();
    let task = store.spawn_cleanup(shutdown.clone());

    clock.advance(2 * HOUR);
    tokio::time::sleep(5 * MINUTE).await;
    assert!(store.contains(&a), "no sweep before the first interval");
    tokio::time::sleep(6 * MINUTE).await;
    // The sweep runs on blocking threads; give it (paused) time to finish.
    for _ in 0..100 {
        if !store.contains(&a) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!store.contains(&a), "swept after one interval");

    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn last_access_is_persisted_coarsely_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::default();
    let t0 = clock.now();
    let (a, b);
    {
        let store = open_with(config(dir.path()), &clock).await;
        a = put(&store, &blob(10, 50)).await;
        b = put(&store, &blob(10, 51)).await;
        clock.advance(10 * MINUTE);
        read_all(&store, &a).await;
        assert_eq!(store.flush_access_times().await, 1, "only a moved");
        assert_eq!(store.flush_access_times().await, 0, "nothing new to write");
        clock.advance(Duration::from_secs(5));
        read_all(&store, &a).await;
        assert_eq!(
            store.flush_access_times().await,
            0,
            "too small a move to be worth a write"
        );
    }
    let store = open_with(config(dir.path()), &clock).await;
    assert_eq!(
        store.stat(&a).await.unwrap().unwrap().last_access,
        t0 + 10 * MINUTE
    );
    assert_eq!(store.stat(&b).await.unwrap().unwrap().last_access, t0);
    // The restored times drive idle cleanup: b idles past the TTI first.
    let report = store.cleanup_idle(t0 + HOUR + 5 * MINUTE).await;
    assert_eq!(report.cache_blobs, 1);
    assert_eq!(store.list(), vec![a]);
}

fn piece(data: &[u8], metainfo: &MetaInfo, index: u32) -> Bytes {
    let start = metainfo.piece_offset(index) as usize;
    let end = start + metainfo.piece_len(index).unwrap() as usize;
    Bytes::copy_from_slice(&data[start..end])
}

#[tokio::test]
async fn download_accepts_pieces_in_any_order_and_refuses_corrupt_ones() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let data = blob(9_500, 60);
    let metainfo = MetaInfo::generate(&data[..], 1_000, PieceHashAlgorithm::Blake3).unwrap();
    let digest = *metainfo.digest();
    let download = store.begin_download(&metainfo).await.unwrap();
    let mut progress = download.subscribe();
    assert_eq!(progress.borrow_and_update().count(), 0);
    assert_eq!(
        fs::metadata(dir.path().join("downloads").join(digest.hex()).join("data"))
            .unwrap()
            .len(),
        9_500,
        "staging file has the blob's length"
    );

    // A corrupt piece and a piece of the wrong length are refused, and nothing is recorded.
    let mut corrupt = piece(&data, &metainfo, 3).to_vec();
    corrupt[17] ^= 0x40;
    assert!(matches!(
        download.write_piece(3, corrupt.into()).await,
        Err(StoreError::Piece(PieceError::HashMismatch { index: 3, .. }))
    ));
    assert!(matches!(
        download
            .write_piece(9, Bytes::copy_from_slice(&data[..1_000]))
            .await,
        Err(StoreError::Piece(PieceError::WrongLength {
            index: 9,
            expected: 500,
            ..
        }))
    ));
    assert!(matches!(
        download.write_piece(10, Bytes::new()).await,
        Err(StoreError::Piece(PieceError::OutOfRange { .. }))
    ));
    assert!(!download.has_piece(3));
    assert!(matches!(
        download.read_piece(3).await,
        Err(StoreError::PieceNotHeld { index: 3, .. })
    ));
    assert!(
        !progress.has_changed().unwrap(),
        "refused pieces do not show as progress"
    );

    // A second caller joins the same download; different metainfo for it is a conflict.
    let joined = store.begin_download(&metainfo).await.unwrap();
    let other = MetaInfo::generate(&data[..], 2_000, PieceHashAlgorithm::Blake3).unwrap();
    assert!(matches!(
        store.begin_download(&other).await,
        Err(StoreError::MetaInfoConflict { .. })
    ));

    for (n, index) in [7u32, 2, 9, 0, 5, 1, 8, 3, 6, 4].into_iter().enumerate() {
        let writer = if n % 2 == 0 { &download } else { &joined };
        assert!(
            writer
                .write_piece(index, piece(&data, &metainfo, index))
                .await
                .unwrap()
        );
        assert!(progress.has_changed().unwrap());
        assert_eq!(progress.borrow_and_update().count(), n as u32 + 1);
        // Verified pieces can be served to other peers right away.
        assert_eq!(
            joined.read_piece(index).await.unwrap(),
            piece(&data, &metainfo, index)
        );
        if n == 4 {
            assert!(matches!(
                download.complete().await,
                Err(StoreError::DownloadIncomplete {
                    missing: 5,
                    total: 10,
                    ..
                })
            ));
        }
    }
    assert!(
        !download
            .write_piece(4, piece(&data, &metainfo, 4))
            .await
            .unwrap(),
        "duplicate"
    );
    assert!(download.bitfield().is_complete());
    assert!(!store.contains(&digest), "not visible before complete()");

    let outcome = download.complete().await.unwrap();
    assert_eq!(outcome, CommitOutcome::Stored(metainfo.clone()));
    assert_eq!(download.state(), DownloadState::Committed);
    assert_eq!(joined.state(), DownloadState::Committed);
    assert!(
        !joined
            .write_piece(0, piece(&data, &metainfo, 0))
            .await
            .unwrap(),
        "late duplicate"
    );
    assert!(matches!(
        joined.complete().await,
        Ok(CommitOutcome::AlreadyExists(_))
    ));
    assert_eq!(read_all(&store, &digest).await, data);
    assert_eq!(
        store.metainfo(&digest).await.unwrap(),
        Some(metainfo.clone())
    );
    assert!(entries(&dir.path().join("downloads")).is_empty());
    assert_eq!(
        entries(&entry_dir(dir.path(), &digest)),
        vec![
            entry_dir(dir.path(), &digest).join("data"),
            entry_dir(dir.path(), &digest).join("meta")
        ]
    );
    // Peers being served keep getting pieces through the same handle.
    assert_eq!(
        download.read_piece(9).await.unwrap(),
        piece(&data, &metainfo, 9)
    );
    assert!(store.download(&digest).is_none());
    assert!(matches!(
        store.begin_download(&metainfo).await,
        Err(StoreError::AlreadyExists(_))
    ));
}

#[tokio::test]
async fn valid_pieces_of_a_blob_with_the_wrong_digest_are_refused_at_complete() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let data = blob(4_200, 70);
    let real = MetaInfo::generate(&data[..], 1_000, PieceHashAlgorithm::Blake3).unwrap();
    let claimed = Digest::of(b"a different blob");
    let lying = MetaInfo::new(
        claimed,
        real.length(),
        real.piece_length(),
        real.piece_hash_algorithm(),
        real.piece_hashes().to_vec(),
    )
    .unwrap();

    let download = store.begin_download(&lying).await.unwrap();
    for index in 0..lying.num_pieces() {
        assert!(
            download
                .write_piece(index, piece(&data, &lying, index))
                .await
                .unwrap()
        );
    }
    match download.complete().await {
        Err(StoreError::DigestMismatch { expected, actual }) => {
            assert_eq!((expected, actual), (claimed, Digest::of(&data)));
        }
        other => panic!("expected DigestMismatch, got {other:?}"),
    }
    assert_eq!(download.state(), DownloadState::Failed);
    assert!(store.list().is_empty());
    assert!(!store.contains(&claimed) && !store.contains(&Digest::of(&data)));
    assert!(
        entries(&dir.path().join("downloads")).is_empty(),
        "staging removed"
    );
    assert!(entries(&dir.path().join("cache")).is_empty());
    assert!(matches!(
        download.read_piece(0).await,
        Err(StoreError::DownloadClosed { .. })
    ));
    assert!(matches!(
        download.write_piece(0, piece(&data, &lying, 0)).await,
        Err(StoreError::DownloadClosed {
            state: DownloadState::Failed,
            ..
        })
    ));
    // A fresh attempt starts from scratch.
    let retry = store.begin_download(&lying).await.unwrap();
    assert_eq!(retry.bitfield().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_streams_the_prefix_as_pieces_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let data = blob(16_000, 80);
    let metainfo = MetaInfo::generate(&data[..], 1_000, PieceHashAlgorithm::Blake3).unwrap();
    let download = store.begin_download(&metainfo).await.unwrap();

    let reader = {
        let download = download.clone();
        tokio::spawn(async move {
            let mut streamed = Vec::new();
            for index in 0..download.metainfo().num_pieces() {
                download.wait_for_piece(index).await.unwrap();
                streamed.extend_from_slice(&download.read_piece(index).await.unwrap());
            }
            streamed
        })
    };
    // Pieces arrive in an order unrelated to the one the reader needs.
    for index in (0..16).rev().step_by(2).chain((0..16).step_by(2)) {
        download
            .write_piece(index, piece(&data, &metainfo, index))
            .await
            .unwrap();
        tokio::task::yield_now().await;
    }
    assert_eq!(reader.await.unwrap(), data);
    download.complete().await.unwrap();
    assert!(matches!(
        download.wait_for_piece(16).await,
        Err(StoreError::Piece(_))
    ));
}

#[tokio::test]
async fn aborted_download_is_gone_for_everyone() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let data = blob(3_000, 90);
    let metainfo = MetaInfo::generate(&data[..], 1_000, PieceHashAlgorithm::Blake3).unwrap();
    let download = store.begin_download(&metainfo).await.unwrap();
    download
        .write_piece(0, piece(&data, &metainfo, 0))
        .await
        .unwrap();
    let waiter = {
        let download = download.clone();
        tokio::spawn(async move { download.wait_for_piece(2).await })
    };
    tokio::task::yield_now().await;
    let other = store.download(metainfo.digest()).unwrap();
    other.abort().await.unwrap();
    assert_eq!(download.state(), DownloadState::Aborted);
    assert!(matches!(
        waiter.await.unwrap(),
        Err(StoreError::DownloadClosed {
            state: DownloadState::Aborted,
            ..
        })
    ));
    assert!(matches!(
        download.write_piece(1, piece(&data, &metainfo, 1)).await,
        Err(StoreError::DownloadClosed { .. })
    ));
    assert!(entries(&dir.path().join("downloads")).is_empty());
    assert!(store.download(metainfo.digest()).is_none());
}

#[tokio::test]
async fn empty_blobs_and_streamed_puts_work() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let empty = Digest::of(b"");
    let outcome = store
        .put_bytes(&empty, Vec::new(), &CommitOptions::default())
        .await
        .unwrap();
    assert_eq!(outcome.metainfo().num_pieces(), 0);
    assert_eq!(read_all(&store, &empty).await, b"");

    let large = blob(3 * 1024 * 1024 + 17, 91);
    let digest = Digest::of(&large);
    store
        .put_reader(&digest, &large[..], &CommitOptions::default())
        .await
        .unwrap();
    assert_eq!(read_all(&store, &digest).await, large);

    // An empty download is complete from the start.
    let metainfo = MetaInfo::new(
        Digest::of(b""),
        0,
        1_000,
        PieceHashAlgorithm::Blake3,
        vec![],
    )
    .unwrap();
    assert!(matches!(
        store.begin_download(&metainfo).await,
        Err(StoreError::AlreadyExists(_))
    ));
    store.delete(&empty).await.unwrap();
    let download = store.begin_download(&metainfo).await.unwrap();
    assert!(download.bitfield().is_complete());
    assert!(matches!(
        download.complete().await,
        Ok(CommitOutcome::Stored(_))
    ));
    assert!(store.contains(&empty));
}

#[tokio::test]
async fn metadata_operations_check_their_blob() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let unknown = Digest::of(b"unknown");
    assert!(matches!(
        store.set_persist(&unknown, true).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.metainfo(&unknown).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(store.stat(&unknown).await.unwrap().is_none());

    let data = blob(5_000, 95);
    let digest = put(&store, &data).await;
    let replacement = MetaInfo::generate(&data[..], 512, PieceHashAlgorithm::Sha256).unwrap();
    store.set_metainfo(&replacement).await.unwrap();
    assert_eq!(
        store.metainfo(&digest).await.unwrap(),
        Some(replacement.clone())
    );
    let wrong_length = MetaInfo::generate(&data[..4_000], 512, PieceHashAlgorithm::Sha256).unwrap();
    let wrong_length = MetaInfo::new(
        digest,
        4_000,
        512,
        PieceHashAlgorithm::Sha256,
        wrong_length.piece_hashes().to_vec(),
    )
    .unwrap();
    assert!(matches!(
        store.set_metainfo(&wrong_length).await,
        Err(StoreError::MetaInfoMismatch { .. })
    ));
    store.set_persist(&digest, true).await.unwrap();
    drop(store);
    let store = open(dir.path()).await;
    let info = store.stat(&digest).await.unwrap().unwrap();
    assert!(info.persist);
    assert_eq!(info.metainfo, Some(replacement));
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test]
async fn blobs_metadata_and_directories_are_not_world_readable() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let store = open(&root).await;
    for sub in ["", "cache", "uploads", "downloads", "tmp"] {
        assert_eq!(mode(&root.join(sub)), 0o750, "{sub:?}");
    }

    // An upload: staging, then the committed entry.
    let data = blob(3_000, 7);
    let digest = Digest::of(&data);
    let id = store.create_upload().await.unwrap();
    let staging = root.join("uploads").join(id.to_string());
    assert_eq!(mode(&staging), 0o750);
    assert_eq!(mode(&staging.join("data")), 0o640);
    store
        .write_upload(&id, 0, Bytes::from(data.clone()))
        .await
        .unwrap();
    store
        .commit_upload(&id, &digest, &small_pieces())
        .await
        .unwrap();
    let entry = entry_dir(&root, &digest);
    for dir in [
        entry.parent().unwrap().parent().unwrap(),
        entry.parent().unwrap(),
        &entry,
    ] {
        assert_eq!(mode(dir), 0o750, "{}", dir.display());
    }
    assert_eq!(mode(&entry.join("data")), 0o640);
    assert_eq!(mode(&entry.join("meta")), 0o640);
    // Rewritten metadata (a temp file renamed over the old one) keeps the mode.
    store.set_persist(&digest, true).await.unwrap();
    assert_eq!(mode(&entry.join("meta")), 0o640);

    // A download: staging files, then the committed entry.
    let data = blob(2_500, 8);
    let metainfo = MetaInfo::generate(&data[..], 1_000, PieceHashAlgorithm::Blake3).unwrap();
    let digest = *metainfo.digest();
    let download = store.begin_download(&metainfo).await.unwrap();
    let staging = root.join("downloads").join(digest.hex());
    assert_eq!(mode(&staging), 0o750);
    for file in ["data", "pieces", "meta"] {
        assert_eq!(mode(&staging.join(file)), 0o640, "{file}");
    }
    for index in 0..metainfo.num_pieces() {
        download
            .write_piece(index, piece(&data, &metainfo, index))
            .await
            .unwrap();
    }
    download.complete().await.unwrap();
    let entry = entry_dir(&root, &digest);
    assert_eq!(mode(&entry), 0o750);
    assert_eq!(mode(&entry.join("data")), 0o640);
    assert_eq!(mode(&entry.join("meta")), 0o640);
}
