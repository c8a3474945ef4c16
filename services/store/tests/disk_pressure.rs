//! A store on a small disk: a tmpfs the test mounts (root only; without root the test says so
//! in the test command's summary of skips). A download is checked against the free space
//! before anything is written, unpinned blobs are evicted to make room, and what cannot fit
//! is refused up front with an error that says why, instead of failing midway.

// Helpers here are not `#[test]` functions; in a test a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use bytesize::ByteSize;
use kraken_config::store::StoreConfig;
use kraken_core::{Digest, MetaInfo, PieceHashAlgorithm};
use kraken_store::{BlobStore, CommitOptions, StoreError};

const MIB: usize = 1 << 20;

/// A tmpfs of a few MiB mounted on a temporary directory; unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(mib: usize) -> Option<Self> {
        let uid = Command::new("id").arg("-u").output().unwrap();
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            let why =
                "disk_pressure: skipped, mounting a tmpfs needs root (run tests/run.sh as root)";
            eprintln!("{why}");
            if let Ok(log) = std::env::var("KRAKEN_SKIP_LOG") {
                use std::io::Write as _;
                let mut file = std::fs::OpenOptions::new().append(true).open(log).unwrap();
                writeln!(file, "{why}").unwrap();
            }
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mount -t tmpfs failed");
        Some(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

fn blob(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

fn metainfo(data: &[u8]) -> MetaInfo {
    MetaInfo::generate(data, MIB as u64, PieceHashAlgorithm::Blake3).unwrap()
}

async fn put(store: &BlobStore, data: &[u8], persist: bool) -> Digest {
    let digest = Digest::of(data);
    store
        .put_bytes(
            &digest,
            data.to_vec(),
            &CommitOptions::default().persist(persist),
        )
        .await
        .unwrap();
    digest
}

#[tokio::test]
async fn a_download_that_cannot_fit_is_refused_up_front_and_unpinned_blobs_make_room() {
    let Some(disk) = Tmpfs::mount(8) else {
        return;
    };
    // No configured capacity: only the disk limits the store.
    let config = StoreConfig {
        dir: disk.path().join("store"),
        capacity: ByteSize(0),
        ..StoreConfig::default()
    };
    let store = BlobStore::open(config).await.unwrap();

    // Twice the disk: refused before a byte is written, naming the need.
    let big = blob(16 * MIB, 1);
    let error = store.begin_download(&metainfo(&big)).await.unwrap_err();
    match &error {
        StoreError::NoSpace { needed, .. } => assert_eq!(*needed, 16 * MIB as u64),
        other => panic!("expected NoSpace, got {other}"),
    }
    assert!(error.is_storage_full(), "{error}");
    assert!(error.to_string().contains("no room for blob"), "{error}");
    assert!(store.download(&Digest::of(&big)).is_none());
    let staged = std::fs::read_dir(disk.path().join("store/downloads"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(staged, 0, "nothing is staged for a refused download");

    // A pinned blob (not yet written back) and an unpinned one fill most of the disk.
    let pinned = put(&store, &blob(3 * MIB, 2), true).await;
    let unpinned = put(&store, &blob(3 * MIB, 3), false).await;

    // A download that fits only without the unpinned blob: it is evicted, the pinned one
    // stays.
    let wanted = blob(3 * MIB, 4);
    let download = store.begin_download(&metainfo(&wanted)).await.unwrap();
    assert!(!store.contains(&unpinned), "the unpinned blob made room");
    assert!(store.contains(&pinned), "a pinned blob is never evicted");

    // That download still needs its 3 MiB; another one of 3 MiB cannot have them too, and
    // nothing else can go: refused, saying what holds the disk.
    let another = blob(3 * MIB, 5);
    let error = store.begin_download(&metainfo(&another)).await.unwrap_err();
    match &error {
        StoreError::NoSpace {
            reserved,
            unevictable,
            ..
        } => {
            assert_eq!(*reserved, 3 * MIB as u64, "{error}");
            assert!(*unevictable >= 3 * MIB as u64, "{error}");
        }
        other => panic!("expected NoSpace, got {other}"),
    }

    // The first download completes on the room it was given.
    for (index, piece) in wanted.chunks(MIB).enumerate() {
        let written = download
            .write_piece(index as u32, bytes::Bytes::copy_from_slice(piece))
            .await
            .unwrap();
        assert!(written);
    }
    download.complete().await.unwrap();
    assert!(store.contains(&Digest::of(&wanted)));
    drop(store);
}
