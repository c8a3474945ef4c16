//! Pull-through of an upstream registry: an image that was never pushed to us, only to an
//! upstream (Debian's real `docker-registry`, playing Docker Hub), is pulled through our agents
//! with skopeo. The build-index resolves its tag through a `registry_tag` rule, the origin
//! fetches its blobs through `registry_blob`, and the swarm carries them to every agent.
//!
//! - Tags follow the upstream: with `tag_ttl: 0s` a re-pointed upstream tag is seen at once.
//! - While the upstream is down, its last answer is served (`max_stale`), and blobs the
//!   cluster already holds still flow.
//! - A push of such a tag to our cluster is refused, naming the upstream to push to.

// Test helpers outside `#[test]` functions: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use kraken_config::Pattern;
use kraken_devcluster::{ConfigHooks, DevCluster};
use kraken_interop::oci_layout::write_single;
use kraken_interop::servers::DockerRegistry;
use kraken_interop::{have, run, run_ok, skopeo_push};
use kraken_tls::Role;

const REPO: &str = "pt/app";

/// The digest of the manifest `reference` (`host/repo:tag`) names, as skopeo reads it.
fn manifest_digest(reference: &str) -> Result<String, String> {
    let (ok, stdout, stderr) = run(
        "skopeo",
        &[
            "inspect",
            "--tls-verify=false",
            "--format",
            "{{.Digest}}",
            &format!("docker://{reference}"),
        ],
    );
    if ok {
        Ok(stdout.trim().to_owned())
    } else {
        Err(stderr)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_image_is_pulled_through_the_swarm_and_its_tag_follows_the_upstream() {
    for tool in ["skopeo", "docker-registry"] {
        assert!(have(tool), "{tool} is missing: tests/run.sh installs it");
    }
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().to_owned();
    let v1 = write_single(&dir.join("v1"), "v1", 2, 96 << 10).unwrap();
    let v2 = write_single(&dir.join("v2"), "v1", 1, 97 << 10).unwrap();

    let upstream = {
        let dir = dir.join("upstream");
        tokio::task::spawn_blocking(move || DockerRegistry::start(&dir))
            .await
            .unwrap()
    };
    let up = upstream.addr.to_string();
    {
        let (layout, dest) = (dir.join("v1"), format!("{up}/{REPO}:v1"));
        tokio::task::spawn_blocking(move || skopeo_push(&layout, "v1", &dest))
            .await
            .unwrap();
    }

    let cluster = DevCluster::builder(dir.join("cluster"))
        .origins(1)
        .agents(2)
        .max_replica(1)
        .pull_through(Pattern::new("^pt/").unwrap(), up.clone())
        .configure(ConfigHooks {
            build_index: Some(std::sync::Arc::new(|config| {
                // Ask the upstream on every lookup; serve its last answer for an hour while
                // it is down.
                config.tag_store.tag_ttl = Duration::ZERO;
                config.tag_store.max_stale = Duration::from_secs(3_600);
            })),
            ..ConfigHooks::default()
        })
        .start()
        .await
        .unwrap();
    let agents: Vec<String> = (0..2)
        .map(|i| cluster.agent_registry_addr(i).to_string())
        .collect();

    // Never pushed to us: both agents serve it, every byte verified by skopeo's copy.
    let pulled = {
        let (agents, dir) = (agents.clone(), dir.clone());
        tokio::task::spawn_blocking(move || {
            agents
                .iter()
                .enumerate()
                .map(|(i, agent)| {
                    let out = dir.join(format!("out{i}"));
                    run_ok(
                        "skopeo",
                        &[
                            "copy",
                            "--src-tls-verify=false",
                            &format!("docker://{agent}/{REPO}:v1"),
                            &format!("oci:{}:v1", out.display()),
                        ],
                    );
                    manifest_digest(&format!("{agent}/{REPO}:v1")).unwrap()
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap()
    };
    assert_eq!(pulled, [v1.digest.clone(), v1.digest.clone()]);

    // The upstream re-points the tag: the next pull through an agent sees the new image.
    {
        let (layout, dest) = (dir.join("v2"), format!("{up}/{REPO}:v1"));
        tokio::task::spawn_blocking(move || skopeo_push(&layout, "v1", &dest))
            .await
            .unwrap();
    }
    let agent = agents[0].clone();
    let repointed =
        tokio::task::spawn_blocking(move || manifest_digest(&format!("{agent}/{REPO}:v1")))
            .await
            .unwrap();
    assert_eq!(
        repointed.unwrap(),
        v2.digest,
        "the tag follows the upstream"
    );

    // A push of a pulled-through tag to our cluster is refused, naming the upstream.
    let tags = cluster.tag_client(Role::Client).unwrap();
    let name: kraken_oci::TaggedName = format!("{REPO}:mine").parse().unwrap();
    let refused = tags
        .put(&name, &v1.digest.parse().unwrap(), false)
        .await
        .unwrap_err();
    let message = format!("{refused:#}");
    assert!(
        message.contains("push it there") && message.contains(&up),
        "{message}"
    );

    // The upstream goes away: the tag's last answer is still served, and the agent that
    // holds the image still serves it whole.
    drop(upstream);
    let agent = agents[0].clone();
    let stale = tokio::task::spawn_blocking(move || manifest_digest(&format!("{agent}/{REPO}:v1")))
        .await
        .unwrap();
    assert_eq!(
        stale.unwrap(),
        v2.digest,
        "served stale while the upstream is down"
    );
    // A tag the upstream never answered for cannot be made up.
    let agent = agents[0].clone();
    let unknown =
        tokio::task::spawn_blocking(move || manifest_digest(&format!("{agent}/{REPO}:never")))
            .await
            .unwrap();
    assert!(
        unknown.is_err(),
        "a tag never resolved is not served: {unknown:?}"
    );

    cluster.shutdown().await;
}
