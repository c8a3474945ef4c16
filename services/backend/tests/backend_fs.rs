//! The `fs` backend against a temporary directory: the generic backend contract (its layout
//! and crash-safety details are unit-tested beside the code).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::ns;
use kraken_backend::FsBackend;

#[tokio::test]
async fn keeps_the_backend_contract() {
    let dir = tempfile::tempdir().unwrap();
    let backend = FsBackend::new(dir.path());
    common::contract::writable(&backend, &ns("library/contract"), 100).await;
}
