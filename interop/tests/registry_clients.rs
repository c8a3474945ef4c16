//! Real registry clients against a whole cluster on loopback (tracker, 3 origins, build-index,
//! proxy, 2 agents): images go in through the proxy and come out through an agent, which
//! fetches every blob through the P2P swarm.
//!
//! - Docker (when an engine answers): a two-layer image built `FROM scratch`, pushed, removed,
//!   pulled back through the agent, same digest and image id;
//! - skopeo (Debian 1.9.3): `copy --all` of a two-platform OCI index in and back out, `inspect`
//!   by tag and by digest;
//! - podman (Debian 4.3): `pull` through the agent — the path a host without a Docker engine
//!   uses.

// Test helpers outside `#[test]` functions: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use kraken_devcluster::{DevCluster, Ports};
use kraken_interop::oci_layout::{write_multi_platform, write_single};
use kraken_interop::{docker_engine, have, run, run_ok, skip};
use sha2::{Digest as _, Sha256};

async fn cluster(dir: &Path) -> DevCluster {
    DevCluster::builder(dir.join("cluster"))
        .ports(Ports::Ephemeral)
        .start()
        .await
        .expect("the dev cluster starts")
}

/// Runs blocking client programs off the runtime that serves the cluster.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work).await.unwrap()
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_pushes_to_the_proxy_and_pulls_through_an_agent() {
    if !docker_engine() {
        skip(
            "docker_pushes_to_the_proxy_and_pulls_through_an_agent",
            "docker: skipped, no engine (`docker info` does not answer); the podman test \
             covers the pull path",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path()).await;
    let proxy = cluster.proxy_registry_addr();
    let agent = cluster.agent_registry_addr(1);
    let build = dir.path().join("build");
    std::fs::create_dir_all(&build).unwrap();
    for (name, seed) in [("a.bin", 7u32), ("b.bin", 11)] {
        let data: Vec<u8> = (0..(1u32 << 20))
            .map(|i| (i.wrapping_mul(2_654_435_761) ^ seed).rotate_left(5) as u8)
            .collect();
        std::fs::write(build.join(name), data).unwrap();
    }
    std::fs::write(
        build.join("Dockerfile"),
        "FROM scratch\nCOPY a.bin /a.bin\nCOPY b.bin /b.bin\n",
    )
    .unwrap();
    // Unique per run: a leftover local image must not make the pull a no-op.
    let repo = format!("interop/docker-{}", std::process::id());
    let pushed_name = format!("127.0.0.1:{}/{repo}:v1", proxy.port());
    let pulled_name = format!("127.0.0.1:{}/{repo}:v1", agent.port());

    let (pushed_digest, image_id) = {
        let (build, pushed_name) = (build.clone(), pushed_name.clone());
        blocking(move || {
            // The classic builder works offline; BuildKit may want to pull its frontend.
            let status = Command::new("docker")
                .env("DOCKER_BUILDKIT", "0")
                .args(["build", "-q", "-t", &pushed_name])
                .arg(&build)
                .output()
                .unwrap();
            assert!(
                status.status.success(),
                "docker build: {}",
                String::from_utf8_lossy(&status.stderr)
            );
            let image_id = run_ok("docker", &["inspect", "--format", "{{.Id}}", &pushed_name]);
            let layers = run_ok(
                "docker",
                &[
                    "inspect",
                    "--format",
                    "{{len .RootFS.Layers}}",
                    &pushed_name,
                ],
            );
            assert_eq!(layers.trim(), "2", "the test image has two layers");
            let push = run_ok("docker", &["push", &pushed_name]);
            let digest = push
                .split_whitespace()
                .skip_while(|word| *word != "digest:")
                .nth(1)
                .unwrap_or_else(|| panic!("no digest in docker push output: {push}"))
                .to_owned();
            run_ok("docker", &["rmi", &pushed_name]);
            (digest, image_id.trim().to_owned())
        })
        .await
    };

    let pulled_name2 = pulled_name.clone();
    let (pulled_digest, pulled_id) = blocking(move || {
        let pull = run_ok("docker", &["pull", &pulled_name2]);
        let digest = pull
            .lines()
            .find_map(|line| line.strip_prefix("Digest: "))
            .unwrap_or_else(|| panic!("no digest in docker pull output: {pull}"))
            .trim()
            .to_owned();
        let id = run_ok("docker", &["inspect", "--format", "{{.Id}}", &pulled_name2]);
        let (_ok, _, _) = run("docker", &["rmi", &pulled_name2]);
        (digest, id.trim().to_owned())
    })
    .await;
    assert_eq!(
        pulled_digest, pushed_digest,
        "manifest digest differs after the round trip"
    );
    assert_eq!(
        pulled_id, image_id,
        "image id (config digest) differs after the round trip"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_copies_a_multi_platform_index_in_and_out() {
    assert!(
        have("skopeo"),
        "skopeo is missing: tests/run.sh installs it (apt-get install skopeo)"
    );
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let image = write_multi_platform(&layout, "v1", 256 * 1024).unwrap();
    let cluster = cluster(dir.path()).await;
    let proxy = cluster.proxy_registry_addr();
    let agent = cluster.agent_registry_addr(0);
    let out = dir.path().join("out");

    let (layout2, out2, image2) = (layout.clone(), out.clone(), image.clone());
    blocking(move || {
        let source = format!("oci:{}:v1", layout2.display());
        // Layers are uncompressed tars: `--preserve-digests` keeps skopeo from gzipping them,
        // which would change every digest up to the index's.
        let pushed = format!("docker://127.0.0.1:{}/interop/multi:v1", proxy.port());
        run_ok(
            "skopeo",
            &[
                "copy",
                "--all",
                "--preserve-digests",
                "--dest-tls-verify=false",
                &source,
                &pushed,
            ],
        );

        let by_tag = format!("docker://127.0.0.1:{}/interop/multi:v1", agent.port());
        let raw = run_ok(
            "skopeo",
            &["inspect", "--raw", "--tls-verify=false", &by_tag],
        );
        assert_eq!(
            sha256(raw.as_bytes()),
            image2.digest,
            "the index came back changed"
        );
        let by_digest = format!(
            "docker://127.0.0.1:{}/interop/multi@{}",
            agent.port(),
            image2.digest
        );
        let raw = run_ok(
            "skopeo",
            &["inspect", "--raw", "--tls-verify=false", &by_digest],
        );
        assert_eq!(sha256(raw.as_bytes()), image2.digest);
        // Without --raw skopeo picks one platform out of the index.
        let inspected = run_ok(
            "skopeo",
            &[
                "inspect",
                "--tls-verify=false",
                "--override-arch",
                "arm64",
                &by_tag,
            ],
        );
        let inspected: serde_json::Value = serde_json::from_str(&inspected).unwrap();
        // skopeo 1.9 reports the digest of what the reference names (the index) and the
        // layers of the platform it picked.
        assert_eq!(inspected["Digest"], image2.digest, "{inspected}");
        assert_eq!(inspected["Architecture"], "arm64");
        assert_eq!(inspected["Layers"], serde_json::json!(image2.layers[2..4]));

        let destination = format!("oci:{}:v1", out2.display());
        run_ok(
            "skopeo",
            &[
                "copy",
                "--all",
                "--preserve-digests",
                "--dest-oci-accept-uncompressed-layers",
                "--src-tls-verify=false",
                &by_tag,
                &destination,
            ],
        );
    })
    .await;
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], image.digest);
    for digest in image.manifests.iter().chain(&image.layers) {
        let hex = digest.trim_start_matches("sha256:");
        let copied = std::fs::read(out.join("blobs/sha256").join(hex))
            .unwrap_or_else(|e| panic!("{digest} was not copied out: {e}"));
        assert_eq!(&sha256(&copied), digest);
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_pulls_through_an_agent() {
    assert!(
        have("podman") && have("skopeo"),
        "podman and skopeo are needed: tests/run.sh installs them (apt-get install podman skopeo)"
    );
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let image = write_single(&layout, "v1", 3, 512 * 1024).unwrap();
    let cluster = cluster(dir.path()).await;
    let proxy = cluster.proxy_registry_addr();
    let agent = cluster.agent_registry_addr(1);
    let storage = dir.path().join("podman");
    let digest = image.digest.clone();
    blocking(move || {
        let source = format!("oci:{}:v1", layout.display());
        let pushed = format!("docker://127.0.0.1:{}/interop/podman-app:v1", proxy.port());
        // Layers are uncompressed tars: keep them so (skopeo would gzip them, changing digests).
        run_ok(
            "skopeo",
            &[
                "copy",
                "--preserve-digests",
                "--dest-tls-verify=false",
                &source,
                &pushed,
            ],
        );
        // A private store: the test leaves nothing behind in the machine's podman storage.
        let root = storage.join("root").display().to_string();
        let runroot = storage.join("run").display().to_string();
        let podman = |args: &[&str]| {
            let mut all = vec![
                "--root",
                &root,
                "--runroot",
                &runroot,
                "--storage-driver",
                "vfs",
            ];
            all.extend_from_slice(args);
            run_ok("podman", &all)
        };
        let name = format!("127.0.0.1:{}/interop/podman-app:v1", agent.port());
        podman(&["pull", "--tls-verify=false", &name]);
        let pulled = podman(&["image", "inspect", "--format", "{{.Digest}}", &name]);
        assert_eq!(pulled.trim(), digest, "podman pulled a different manifest");
    })
    .await;
    cluster.shutdown().await;
}
