//! `kraken mirror-config` with the real runtimes: a private containerd (`ctr --hosts-dir`)
//! and podman (`CONTAINERS_REGISTRIES_CONF`) pull images of an "upstream" registry (Debian's
//! `docker-registry` playing Docker Hub) through a devcluster agent, using exactly the files
//! the `kraken` binary wrote, and fall back to the upstream when the agent cannot help.
//!
//! - `mirror/app:v1` exists only in our cluster: pulling `UPSTREAM/mirror/app:v1` works only
//!   if the runtime asked the agent.
//! - `mirror/y:v1` exists only upstream and the agent answers 404: the runtime goes on to the
//!   upstream.
//! - `mirror/z:v1` exists only upstream and the agent is stopped: the runtime goes on to the
//!   upstream.
//! - `pt/w:v1` and `pt/u:v1` exist only upstream, in a namespace the cluster pulls through:
//!   containerd and podman get them from the agent (which then holds them), the cluster having
//!   fetched them from the upstream.
//!
//! containerd needs root; without it the test says so loudly and returns.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use kraken_config::Pattern;
use kraken_devcluster::DevCluster;
use kraken_interop::oci_layout::write_single;
use kraken_interop::servers::{Containerd, DockerRegistry};
use kraken_interop::{have, run, skopeo_push};

const REPO: &str = "mirror/app";

fn kraken(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_kraken"))
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "kraken {}: {stdout}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The manifest digest containerd recorded for `reference`.
fn ctr_digest(containerd: &Containerd, reference: &str) -> String {
    let (_, listing, _) = containerd.ctr(&["images", "ls"]);
    listing
        .lines()
        .find_map(|line| {
            let mut columns = line.split_whitespace();
            (columns.next() == Some(reference))
                .then(|| columns.nth(1).unwrap_or_default().to_owned())
        })
        .unwrap_or_else(|| panic!("containerd has no image {reference}:\n{listing}"))
}

fn ctr_pull(containerd: &Containerd, hosts: &Path, reference: &str) -> String {
    let hosts = hosts.display().to_string();
    let (ok, stdout, stderr) = containerd.ctr(&[
        "images",
        "pull",
        "--hosts-dir",
        &hosts,
        "--snapshotter",
        "native",
        reference,
    ]);
    assert!(ok, "ctr images pull {reference}:\n{stdout}\n{stderr}");
    ctr_digest(containerd, reference)
}

struct Podman {
    storage: PathBuf,
    registries_conf: PathBuf,
}

impl Podman {
    /// Pulls with only our registries.conf, into a private store; returns the digest.
    fn pull(&self, reference: &str) -> String {
        let root = self.storage.join("root");
        let runroot = self.storage.join("run");
        let podman = |args: &[&str]| {
            let output = Command::new("podman")
                .env("CONTAINERS_REGISTRIES_CONF", &self.registries_conf)
                .arg("--root")
                .arg(&root)
                .arg("--runroot")
                .arg(&runroot)
                .args(["--storage-driver", "vfs"])
                .args(args)
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "podman {}: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            String::from_utf8_lossy(&output.stdout).trim().to_owned()
        };
        podman(&["pull", reference]);
        podman(&["image", "inspect", "--format", "{{.Digest}}", reference])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_and_podman_pull_through_the_agent_and_fall_back_to_the_upstream() {
    // containerd refuses to start without root.
    if run("id", &["-u"]).1.trim() != "0" {
        kraken_interop::skip(
            "mirror_config",
            "needs root to run a private containerd (run tests/run.sh as root)",
        );
        return;
    }
    for tool in ["containerd", "ctr", "podman", "skopeo", "docker-registry"] {
        assert!(have(tool), "{tool} is missing: tests/run.sh installs it");
    }
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().to_owned();
    // Three distinct images (different layer sizes give different digests).
    let app = write_single(&dir.join("app"), "v1", 1, 64 << 10).unwrap();
    let y = write_single(&dir.join("y"), "v1", 1, 65 << 10).unwrap();
    let z = write_single(&dir.join("z"), "v1", 2, 33 << 10).unwrap();
    let w = write_single(&dir.join("w"), "v1", 1, 66 << 10).unwrap();
    let u = write_single(&dir.join("u"), "v1", 1, 67 << 10).unwrap();

    let upstream = {
        let dir = dir.join("upstream");
        tokio::task::spawn_blocking(move || DockerRegistry::start(&dir))
            .await
            .unwrap()
    };
    let up = upstream.addr;
    let cluster = DevCluster::builder(dir.join("cluster"))
        .origins(1)
        .agents(1)
        .max_replica(1)
        .pull_through(Pattern::new("^pt/").unwrap(), up.to_string())
        .start()
        .await
        .unwrap();
    let proxy = cluster.proxy_registry_addr();
    let agent = cluster.agent_registry_addr(0);

    let hosts = dir.join("hosts");
    let registries_conf = dir.join("registries.conf");
    let containerd = {
        let dir = dir.clone();
        let (hosts, registries_conf) = (hosts.clone(), registries_conf.clone());
        tokio::task::spawn_blocking(move || {
            skopeo_push(&dir.join("app"), "v1", &format!("{proxy}/{REPO}:v1"));
            skopeo_push(&dir.join("y"), "v1", &format!("{up}/mirror/y:v1"));
            skopeo_push(&dir.join("z"), "v1", &format!("{up}/mirror/z:v1"));
            skopeo_push(&dir.join("w"), "v1", &format!("{up}/pt/w:v1"));
            skopeo_push(&dir.join("u"), "v1", &format!("{up}/pt/u:v1"));
            let (at_upstream, _, _) = run(
                "skopeo",
                &[
                    "inspect",
                    "--tls-verify=false",
                    &format!("docker://{up}/{REPO}:v1"),
                ],
            );
            assert!(!at_upstream, "{REPO} must exist only in our cluster");

            let agent = agent.to_string();
            let upstream = format!("http://{up}");
            let written = kraken(&[
                "mirror-config",
                "--runtime",
                "containerd",
                "--agent",
                &agent,
                "--upstream",
                &upstream,
                "--config-path",
                hosts.to_str().unwrap(),
            ]);
            assert!(written.contains("hosts.toml"), "{written}");
            kraken(&[
                "mirror-config",
                "--runtime",
                "podman",
                "--agent",
                &agent,
                "--upstream",
                &upstream,
                "--registries-conf",
                registries_conf.to_str().unwrap(),
            ]);
            Containerd::start(&dir.join("containerd"))
        })
        .await
        .unwrap()
    };
    let podman = Podman {
        storage: dir.join("podman"),
        registries_conf,
    };

    // With the agent up: what only the cluster has comes through the agent; what only the
    // upstream has comes from the upstream after the agent's 404.
    let pulled_through = [
        ("containerd", w.digest.clone()),
        ("podman", u.digest.clone()),
    ];
    let (containerd, podman, hosts) = tokio::task::spawn_blocking(move || {
        let through_agent = format!("{up}/{REPO}:v1");
        assert_eq!(ctr_pull(&containerd, &hosts, &through_agent), app.digest);
        assert_eq!(podman.pull(&through_agent), app.digest);
        let not_in_cluster = format!("{up}/mirror/y:v1");
        assert_eq!(ctr_pull(&containerd, &hosts, &not_in_cluster), y.digest);
        assert_eq!(podman.pull(&not_in_cluster), y.digest);
        // Pulled through: only upstream, yet served by the agent.
        assert_eq!(
            ctr_pull(&containerd, &hosts, &format!("{up}/pt/w:v1")),
            w.digest
        );
        assert_eq!(podman.pull(&format!("{up}/pt/u:v1")), u.digest);
        (containerd, podman, hosts)
    })
    .await
    .unwrap();
    let agent_store = cluster.agents[0].store();
    for (runtime, digest) in pulled_through {
        let digest: kraken_core::Digest = digest.parse().unwrap();
        assert!(
            agent_store.contains(&digest),
            "{runtime}'s pull of a pulled-through image did not go through the agent"
        );
    }

    // With the agent down: the upstream directly.
    cluster.shutdown().await;
    tokio::task::spawn_blocking(move || {
        let agent_down = format!("{up}/mirror/z:v1");
        assert_eq!(ctr_pull(&containerd, &hosts, &agent_down), z.digest);
        assert_eq!(podman.pull(&agent_down), z.digest);
        drop(containerd);
        drop(upstream);
    })
    .await
    .unwrap();
}
