//! Containers: the `kraken` image of `deploy/build-image.sh` and the cluster of
//! `deploy/compose.yaml` on the real Docker engine — a tracker, three origins, a build-index, a
//! proxy and two agents, each its own container with its own IP on one network, finding each
//! other by DNS name, with the PKI of the compose `certs` service.
//!
//! 1. The image is built from the debug `kraken` binary (`$KRAKEN_BIN`, else the one next to
//!    this test's target directory) and the cluster started with `docker-compose up`, under a
//!    per-run project name, subnet, host ports and image tag, so runs cannot collide.
//! 2. `docker login` with a user from a generated htpasswd file, and `docker push` of an image
//!    with a few tens of MiB of random data, through the proxy.
//! 3. With the origins' seeding bandwidth capped (so the transfer takes seconds), `docker pull`
//!    through agent1 and `skopeo copy` through agent2 run at the same time (two Docker pulls
//!    would share one layer download in the daemon), and an origin that holds the layer is
//!    `docker kill`ed once the agents are fetching it. Both complete with the pushed digests;
//!    so does a `docker pull` through agent2 afterwards, the origin still dead.
//! 4. `docker-compose stop` stops every container with exit status 0 (SIGTERM handled by kraken
//!    as PID 1, not the SIGKILL after the grace period), `start` brings every one back (the
//!    killed origin too), and agent1 is replaced by a fresh one with an empty cache: its pull
//!    resolves the tag and fetches the blobs from what the volumes kept, digest unchanged.
//!
//! Everything it creates (containers, network, volumes, images) is removed on drop, also when an
//! assertion fails. Without a Docker engine it says so loudly and skips.

// Test helpers outside `#[test]` functions: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kraken_interop::{docker_engine, have, skip};
use sha2::{Digest as _, Sha256};

const TEST: &str = "containers";

/// The test image's one layer: random, so it compresses to about its size and every transfer
/// moves all of it.
const LAYER_BYTES: usize = 48 << 20;
/// Each origin seeds at 2 MB/s: three of them need seconds for the layer, long enough to kill
/// one in the middle of the transfer.
const ORIGIN_EGRESS_BITS_PER_SEC: u64 = 16_000_000;

const SERVICES: [&str; 8] = [
    "origin1",
    "origin2",
    "origin3",
    "tracker",
    "build-index",
    "proxy",
    "agent1",
    "agent2",
];
const ORIGINS: [&str; 3] = ["origin1", "origin2", "origin3"];

/// Hang guards only: a healthy run needs a fraction of each.
const BUILD_TIMEOUT: Duration = Duration::from_secs(600);
const COMPOSE_TIMEOUT: Duration = Duration::from_secs(300);
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(180);
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(300);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// skopeo's own limit per command.
const SKOPEO_TIMEOUT: &str = "300s";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("interop/ has a parent")
        .to_path_buf()
}

/// The debug `kraken` binary the image is built from: `$KRAKEN_BIN`, else `<target>/debug/kraken`
/// beside this test (`<target>/debug/deps/containers-HASH`), which `tests/run.sh` builds.
fn kraken_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("KRAKEN_BIN") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "KRAKEN_BIN={} is not a file",
            path.display()
        );
        return path;
    }
    let exe = std::env::current_exe().expect("the test knows its own path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test runs from <target>/<profile>/deps");
    let binary = profile_dir.join("kraken");
    assert!(
        binary.is_file(),
        "no kraken binary at {}: build it first (`cargo build -p kraken`; tests/run.sh builds \
         the whole workspace) or point KRAKEN_BIN at one",
        binary.display()
    );
    binary
}

/// A small xorshift generator: unique names and random layer data without another dependency.
struct Random(u64);

impl Random {
    fn new() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Self((nanos ^ (u64::from(std::process::id()) << 32)) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// What a finished command left.
struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Output {
    fn ok(&self) -> bool {
        self.status.success()
    }
}

/// Runs `command` to completion, killing it (and failing the test) after `timeout`; `stdin` is
/// written to it when given.
fn run_for(command: &mut Command, timeout: Duration, stdin: Option<&[u8]>) -> Output {
    let shown = format!("{command:?}");
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {shown}: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(input)
            .unwrap_or_else(|e| panic!("writing to {shown}: {e}"));
    }
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = pipe.read_to_end(&mut text);
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout is piped")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr is piped")));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for a child") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{shown} did not finish within {timeout:?}:\n{}\n{}",
                stdout.join().unwrap_or_default(),
                stderr.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// Like [`run_for`], failing the test with the command and its output unless it succeeds.
fn run_ok_for(command: &mut Command, timeout: Duration) -> String {
    let shown = format!("{command:?}");
    let out = run_for(command, timeout, None);
    assert!(
        out.ok(),
        "{shown} failed ({}):\n{}\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    out.stdout
}

fn docker(args: &[&str]) -> Command {
    let mut command = Command::new("docker");
    command.args(args);
    command
}

/// `docker-compose` (1.29 here), or the v2 plugin where only that is installed.
fn compose_program() -> (&'static str, &'static [&'static str]) {
    if have("docker-compose") {
        ("docker-compose", &[])
    } else {
        let v2 = Command::new("docker")
            .args(["compose", "version"])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            v2,
            "neither docker-compose nor `docker compose` is installed (apt-get install \
             docker-compose)"
        );
        ("docker", &["compose"])
    }
}

/// The `digest: sha256:…` that `docker push` / `Digest: sha256:…` that `docker pull` prints.
fn printed_digest(output: &str) -> String {
    output
        .split_whitespace()
        .skip_while(|word| !word.eq_ignore_ascii_case("digest:"))
        .nth(1)
        .unwrap_or_else(|| panic!("no digest in:\n{output}"))
        .to_owned()
}

/// Where a blob lives in a `kraken` store (see kraken-store's layout): committed, or being
/// downloaded.
fn cache_path(store: &str, digest: &str) -> String {
    let hex = digest.trim_start_matches("sha256:");
    format!("{store}/cache/{}/{}/{hex}/meta", &hex[..2], &hex[2..4])
}

fn download_path(store: &str, digest: &str) -> String {
    format!("{store}/downloads/{}", digest.trim_start_matches("sha256:"))
}

const ORIGIN_STORE: &str = "/var/lib/kraken/origin/store";
const AGENT_STORE: &str = "/var/lib/kraken/agent/store";

/// One compose project: the cluster's containers, network and volumes, and the images the run
/// made. Everything is removed on drop.
struct Cluster {
    project: String,
    compose: (&'static str, &'static [&'static str]),
    file: PathBuf,
    env: Vec<(String, String)>,
    /// Image references to remove at the end.
    images: Vec<String>,
    /// A Docker client config of its own: `docker login` must not touch the user's.
    docker_config: PathBuf,
    /// Last: removed after the containers that mount files from it.
    dir: tempfile::TempDir,
}

impl Cluster {
    fn compose(&self, args: &[&str]) -> Command {
        let mut command = Command::new(self.compose.0);
        command
            .args(self.compose.1)
            .arg("-p")
            .arg(&self.project)
            .arg("-f")
            .arg(&self.file)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }

    fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// Container id of `service` (running or not), from the labels compose puts on it (the
    /// docker CLI answers much faster than docker-compose).
    fn container(&self, service: &str) -> String {
        let ids = run_ok_for(
            &mut docker(&[
                "ps",
                "-aq",
                "--filter",
                &format!("label=com.docker.compose.project={}", self.project),
                "--filter",
                &format!("label=com.docker.compose.service={service}"),
            ]),
            COMMAND_TIMEOUT,
        );
        let ids: Vec<&str> = ids.split_whitespace().collect();
        match ids[..] {
            [id] => id.to_owned(),
            _ => panic!("{service}: expected one container, found {ids:?}"),
        }
    }

    /// `127.0.0.1:PORT` that `port` of `service` is published at.
    fn published(&self, service: &str, port: u16) -> String {
        let id = self.container(service);
        let out = run_ok_for(
            &mut docker(&["port", &id, &format!("{port}/tcp")]),
            COMMAND_TIMEOUT,
        );
        out.lines()
            .map(str::trim)
            .find(|line| line.starts_with("127.0.0.1:"))
            .unwrap_or_else(|| panic!("{service}: {port}/tcp is not published on 127.0.0.1: {out}"))
            .to_owned()
    }

    fn inspect(&self, id: &str, format: &str) -> String {
        run_ok_for(
            &mut docker(&["inspect", "--format", format, id]),
            COMMAND_TIMEOUT,
        )
        .trim()
        .to_owned()
    }

    /// Waits until every one of `services` reports healthy (the image's `kraken health` check);
    /// fails at once, with its log, if one exits instead.
    fn wait_healthy(&self, services: &[&str]) {
        let deadline = Instant::now() + HEALTHY_TIMEOUT;
        for service in services {
            let id = self.container(service);
            loop {
                let state = self.inspect(&id, "{{.State.Status}} {{.State.Health.Status}}");
                match state.split_once(' ') {
                    Some((_, "healthy")) => break,
                    Some(("running", _)) => {}
                    _ => panic!(
                        "{service} is `{state}`, not starting:\n{}",
                        self.logs(service)
                    ),
                }
                assert!(
                    Instant::now() < deadline,
                    "{service} not healthy after {HEALTHY_TIMEOUT:?} ({state}):\n{}",
                    self.logs(service)
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }

    fn logs(&self, service: &str) -> String {
        let out = run_for(
            &mut self.compose(&["logs", "--no-color", "--tail", "40", service]),
            COMMAND_TIMEOUT,
            None,
        );
        format!("{}{}", out.stdout, out.stderr)
    }

    /// Whether `path` exists in `service`'s container (running or stopped).
    fn has_file(&self, service: &str, path: &str) -> bool {
        let id = self.container(service);
        let mut command = docker(&["cp", &format!("{id}:{path}"), "-"]);
        command.stdout(Stdio::null()).stderr(Stdio::null());
        command.status().is_ok_and(|s| s.success())
    }

    fn wait_for_file(&self, service: &str, path: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.has_file(service, path) {
            assert!(
                Instant::now() < deadline,
                "{service} has no {path} after {timeout:?}:\n{}",
                self.logs(service)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `docker` with this run's client config (for the registry login).
    fn docker_client(&self, args: &[&str]) -> Command {
        let mut command = docker(args);
        command.env("DOCKER_CONFIG", &self.docker_config);
        command
    }

    fn remove_image(&self, reference: &str) {
        let _ = run_for(&mut docker(&["rmi", reference]), COMMAND_TIMEOUT, None);
    }

    /// `docker pull` of `reference`; returns the digest pulled and the local image id.
    fn pull(&mut self, reference: &str) -> (String, String) {
        self.images.push(reference.to_owned());
        let out = run_ok_for(
            &mut self.docker_client(&["pull", reference]),
            TRANSFER_TIMEOUT,
        );
        let id = self.inspect(reference, "{{.Id}}");
        (printed_digest(&out), id)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for service in SERVICES {
                eprintln!("--- {service} log, last lines ---\n{}", self.logs(service));
            }
        }
        let down = run_for(
            &mut self.compose(&["down", "--volumes", "--remove-orphans", "--timeout", "10"]),
            COMMAND_TIMEOUT,
            None,
        );
        if !down.ok() {
            eprintln!("compose down failed: {}\n{}", down.stdout, down.stderr);
        }
        // Whatever compose left (it may not have got as far as knowing about it).
        let label = format!("label=com.docker.compose.project={}", self.project);
        for (list, remove) in [
            (
                vec!["ps", "-aq", "--filter", &label],
                vec!["rm", "-f", "-v"],
            ),
            (
                vec!["volume", "ls", "-q", "--filter", &label],
                vec!["volume", "rm", "-f"],
            ),
            (
                vec!["network", "ls", "-q", "--filter", &label],
                vec!["network", "rm"],
            ),
        ] {
            let listed = run_for(&mut docker(&list), COMMAND_TIMEOUT, None);
            for id in listed.stdout.split_whitespace() {
                let mut args = remove.clone();
                args.push(id);
                let _ = run_for(&mut docker(&args), COMMAND_TIMEOUT, None);
            }
        }
        for image in &self.images {
            let _ = run_for(&mut docker(&["rmi", "-f", image]), COMMAND_TIMEOUT, None);
        }
    }
}

/// A pull running in the background, so that an origin can be killed while it runs.
struct Transfer {
    done: Arc<AtomicBool>,
    handle: JoinHandle<Output>,
}

impl Transfer {
    fn start(mut command: Command) -> Self {
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        let handle = std::thread::spawn(move || {
            let out = run_for(&mut command, TRANSFER_TIMEOUT, None);
            flag.store(true, Ordering::SeqCst);
            out
        });
        Self { done, handle }
    }

    fn finished(&self) -> bool {
        self.done.load(Ordering::SeqCst)
    }

    fn join(self, what: &str) -> String {
        let out = self
            .handle
            .join()
            .unwrap_or_else(|_| panic!("{what}: its thread panicked"));
        assert!(out.ok(), "{what} failed:\n{}\n{}", out.stdout, out.stderr);
        out.stdout
    }
}

/// Progress on stderr, with the time since the test started (information only).
fn step(start: Instant, what: &str) {
    eprintln!("[{:6.1}s] {what}", start.elapsed().as_secs_f64());
}

#[test]
fn compose_cluster_serves_pulls_through_an_origin_kill_and_a_restart() {
    if !docker_engine() {
        skip(
            TEST,
            "docker: no engine (`docker info` does not answer); nothing to run containers on",
        );
        return;
    }
    assert!(
        have("skopeo"),
        "skopeo is missing: tests/run.sh installs it (apt-get install skopeo)"
    );
    let start = Instant::now();
    let binary = kraken_binary();
    let compose = compose_program();
    let mut random = Random::new();
    let prefix = format!(
        "kraken-ct-{}-{:06x}",
        std::process::id(),
        random.below(1 << 24)
    );
    let dir = tempfile::tempdir().unwrap();
    let docker_config = dir.path().join("docker-config");
    std::fs::create_dir(&docker_config).unwrap();

    // A pusher, in an htpasswd file the proxy reads (bcrypt cost 4: a test, not a secret).
    let password = format!("pw-{:016x}", random.next());
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(
        &htpasswd,
        format!("tester:{}\n", bcrypt::hash(&password, 4).unwrap()),
    )
    .unwrap();

    let image = format!("{prefix}:kraken");
    let mut cluster = Cluster {
        project: prefix.replace('-', ""),
        compose,
        file: repo_root().join("deploy/compose.yaml"),
        env: [
            ("KRAKEN_IMAGE", image.as_str()),
            // Empty: any free port on 127.0.0.1.
            ("KRAKEN_PROXY_PORT", ""),
            ("KRAKEN_AGENT1_PORT", ""),
            ("KRAKEN_AGENT2_PORT", ""),
            ("KRAKEN_HTPASSWD", &htpasswd.display().to_string()),
            // A killed container must stay dead until the test starts it.
            ("KRAKEN_RESTART", "no"),
            ("KRAKEN_HEALTH_INTERVAL", "1s"),
            ("KRAKEN_LOG", "info"),
            (
                "ORIGIN_EGRESS_BITS_PER_SEC",
                &ORIGIN_EGRESS_BITS_PER_SEC.to_string(),
            ),
            ("ORIGIN_INGRESS_BITS_PER_SEC", "2516582400"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
        images: vec![image.clone()],
        docker_config,
        dir,
    };

    // 1. The image, from the debug binary; then the cluster, on a subnet of its own (another
    //    network may hold the one picked: then another).
    run_ok_for(
        Command::new(repo_root().join("deploy/build-image.sh"))
            .arg("--binary")
            .arg(&binary)
            .args(["--tag", &image]),
        BUILD_TIMEOUT,
    );
    step(
        start,
        &format!("image {image} built from {}", binary.display()),
    );
    let mut attempts = 0;
    loop {
        let subnet = format!("10.{}.{}.0/24", 64 + random.below(190), random.below(256));
        cluster.set_env("KRAKEN_SUBNET", &subnet);
        let up = run_for(&mut cluster.compose(&["up", "-d"]), COMPOSE_TIMEOUT, None);
        if up.ok() {
            step(
                start,
                &format!("cluster {} up on {subnet}", cluster.project),
            );
            break;
        }
        attempts += 1;
        let overlap = up.stderr.contains("overlap");
        assert!(
            overlap && attempts < 5,
            "docker-compose up failed:\n{}\n{}",
            up.stdout,
            up.stderr
        );
        let _ = run_for(&mut cluster.compose(&["down", "-v"]), COMMAND_TIMEOUT, None);
    }
    cluster.wait_healthy(&SERVICES);
    step(start, "every container healthy");

    // Names resolve inside the image, and the certificates carry them: agent1 asks origin1's
    // health service by its DNS name, over mutual TLS with the agent's own certificate.
    let agent1 = cluster.container("agent1");
    let health = run_ok_for(
        &mut docker(&[
            "exec",
            &agent1,
            "kraken",
            "health",
            "origin1:15002",
            "--role",
            "origin",
            "--ca",
            "/etc/kraken/certs/ca.pem",
            "--cert",
            "/etc/kraken/certs/agent.pem",
            "--key",
            "/etc/kraken/certs/agent.key",
        ]),
        COMMAND_TIMEOUT,
    );
    assert_eq!(health.trim(), "SERVING");

    // 2. An image with one random layer, pushed through the proxy by a logged-in user.
    let proxy = cluster.published("proxy", 15000);
    let repo = format!("containers/{prefix}");
    let build = cluster.dir.path().join("build");
    std::fs::create_dir(&build).unwrap();
    std::fs::write(build.join("layer.bin"), random.bytes(LAYER_BYTES)).unwrap();
    std::fs::write(
        build.join("Dockerfile"),
        "FROM scratch\nCOPY layer.bin /layer.bin\n",
    )
    .unwrap();
    let pushed = format!("{proxy}/{repo}:v1");
    cluster.images.push(pushed.clone());
    run_ok_for(
        docker(&["build", "-q", "-t", &pushed])
            .arg(&build)
            .env("DOCKER_BUILDKIT", "0"),
        BUILD_TIMEOUT,
    );
    let image_id = cluster.inspect(&pushed, "{{.Id}}");
    let login = run_for(
        &mut cluster.docker_client(&["login", &proxy, "-u", "tester", "--password-stdin"]),
        COMMAND_TIMEOUT,
        Some(password.as_bytes()),
    );
    assert!(
        login.ok(),
        "docker login: {}\n{}",
        login.stdout,
        login.stderr
    );
    let push = run_ok_for(
        &mut cluster.docker_client(&["push", &pushed]),
        TRANSFER_TIMEOUT,
    );
    let digest = printed_digest(&push);
    step(start, &format!("pushed {pushed} ({digest})"));
    cluster.remove_image(&pushed);
    let manifest: serde_json::Value = serde_json::from_str(&run_ok_for(
        Command::new("skopeo").args([
            "--command-timeout",
            SKOPEO_TIMEOUT,
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{pushed}"),
        ]),
        TRANSFER_TIMEOUT,
    ))
    .unwrap();
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap_or_else(|| panic!("no layer in {manifest}"))
        .to_owned();

    // Every origin holds the layer (three replicas of three), so whichever is killed is one
    // the agents may be fetching from.
    for origin in ORIGINS {
        cluster.wait_for_file(origin, &cache_path(ORIGIN_STORE, &layer), HEALTHY_TIMEOUT);
    }

    step(start, &format!("every origin holds the layer {layer}"));

    // 3. Two pulls at once, one origin killed while the layer is on its way.
    let agent1_registry = cluster.published("agent1", 16000);
    let agent2_registry = cluster.published("agent2", 16000);
    let via_agent1 = format!("{agent1_registry}/{repo}:v1");
    cluster.images.push(via_agent1.clone());
    let copied = cluster.dir.path().join("copied");
    let docker_pull = Transfer::start(cluster.docker_client(&["pull", &via_agent1]));
    let mut skopeo = Command::new("skopeo");
    skopeo
        .args([
            "--command-timeout",
            SKOPEO_TIMEOUT,
            "copy",
            "--src-tls-verify=false",
        ])
        .arg(format!("docker://{agent2_registry}/{repo}:v1"))
        .arg(format!("dir:{}", copied.display()));
    let skopeo_copy = Transfer::start(skopeo);

    let deadline = Instant::now() + TRANSFER_TIMEOUT;
    while !["agent1", "agent2"]
        .iter()
        .any(|agent| cluster.has_file(agent, &download_path(AGENT_STORE, &layer)))
    {
        assert!(
            !(docker_pull.finished() && skopeo_copy.finished()),
            "both pulls ended before either agent was seen downloading the layer"
        );
        assert!(
            Instant::now() < deadline,
            "no agent started downloading {layer} within {TRANSFER_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let victim = ORIGINS[random.below(3) as usize];
    run_ok_for(
        &mut docker(&["kill", &cluster.container(victim)]),
        COMMAND_TIMEOUT,
    );
    let in_flight = (!docker_pull.finished(), !skopeo_copy.finished());
    step(
        start,
        &format!("killed {victim} while the agents download the layer"),
    );
    assert!(
        in_flight.0 && in_flight.1,
        "a pull finished before {victim} was killed (running: docker pull {}, skopeo copy {}): \
         the kill did not land mid-transfer; lower ORIGIN_EGRESS_BITS_PER_SEC",
        in_flight.0,
        in_flight.1
    );

    let out = docker_pull.join("docker pull through agent1");
    assert_eq!(printed_digest(&out), digest, "docker pull through agent1");
    assert_eq!(cluster.inspect(&via_agent1, "{{.Id}}"), image_id);
    skopeo_copy.join("skopeo copy through agent2");
    step(
        start,
        "docker pull through agent1 and skopeo copy through agent2 done",
    );
    let copied_manifest = std::fs::read(copied.join("manifest.json")).unwrap();
    assert_eq!(
        sha256(&copied_manifest),
        digest,
        "skopeo copy through agent2"
    );
    let copied_layer = std::fs::read(copied.join(layer.trim_start_matches("sha256:")))
        .unwrap_or_else(|e| {
            panic!("skopeo copy through agent2 did not write the layer {layer}: {e}")
        });
    assert_eq!(sha256(&copied_layer), layer, "the layer through agent2");
    drop(copied_layer);

    // The Docker path through agent2 as well, the origin still dead.
    cluster.remove_image(&via_agent1);
    let via_agent2 = format!("{agent2_registry}/{repo}:v1");
    let (pulled, id) = cluster.pull(&via_agent2);
    assert_eq!(pulled, digest, "docker pull through agent2");
    assert_eq!(id, image_id);
    cluster.remove_image(&via_agent2);
    step(start, "docker pull through agent2 done");

    // 4. Every container stops on SIGTERM with status 0, and comes back (the killed origin
    //    too) with what its volumes hold.
    run_ok_for(
        // Docker's default grace period: a container still running after it is killed (137).
        &mut cluster.compose(&["stop", "--timeout", "10"]),
        COMPOSE_TIMEOUT,
    );
    for service in SERVICES {
        let id = cluster.container(service);
        let (status, code) = {
            let state = cluster.inspect(&id, "{{.State.Status}} {{.State.ExitCode}}");
            let (status, code) = state.split_once(' ').unwrap();
            (status.to_owned(), code.to_owned())
        };
        assert_eq!(status, "exited", "{service}");
        if service != victim {
            assert_eq!(
                code,
                "0",
                "{service} did not exit 0 on SIGTERM (137: killed after the grace period):\n{}",
                cluster.logs(service)
            );
        }
    }
    step(start, "every container stopped with status 0");
    run_ok_for(&mut cluster.compose(&["start"]), COMPOSE_TIMEOUT);
    cluster.wait_healthy(&SERVICES);
    step(start, "every container restarted and healthy");
    assert!(
        cluster.has_file(victim, &cache_path(ORIGIN_STORE, &layer)),
        "{victim} lost the layer across its kill and restart"
    );

    // A fresh agent1 (new container, empty cache volume): the tag from the build-index's
    // store, the blobs from the origins' (and agent2's) volumes.
    run_ok_for(
        &mut cluster.compose(&["rm", "--stop", "--force", "agent1"]),
        COMPOSE_TIMEOUT,
    );
    let volume = format!("{}_agent1", cluster.project);
    run_ok_for(&mut docker(&["volume", "rm", &volume]), COMMAND_TIMEOUT);
    run_ok_for(
        &mut cluster.compose(&["up", "-d", "--no-deps", "agent1"]),
        COMPOSE_TIMEOUT,
    );
    cluster.wait_healthy(&["agent1"]);
    assert!(
        !cluster.has_file("agent1", &cache_path(AGENT_STORE, &layer)),
        "the new agent1 is not fresh"
    );
    let via_new_agent1 = format!("{}/{repo}:v1", cluster.published("agent1", 16000));
    let (pulled, id) = cluster.pull(&via_new_agent1);
    assert_eq!(
        pulled, digest,
        "docker pull through a fresh agent1 after the restart"
    );
    assert_eq!(id, image_id);
    assert!(cluster.has_file("agent1", &cache_path(AGENT_STORE, &layer)));
    step(start, "docker pull through a fresh agent1 done");
}
