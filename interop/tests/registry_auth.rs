//! Real clients against the proxy's authenticated HTTPS registry, as `kraken devcluster` runs it
//! (`secure_registry`: TLS from the dev CA, a generated login in `registry-credentials`), plus a
//! pull-only user `reader`:
//!
//! - skopeo 1.9 (always): an anonymous push and a wrong password are refused (`401`), a
//!   pull-only user is denied (`403 DENIED`), `--dest-creds` with the generated login pushes,
//!   and the image comes back out through an agent;
//! - Docker (when an engine answers): `docker login` over TLS trusting the dev CA through
//!   `/etc/docker/certs.d`, a wrong password refused, `docker push`, and the pull served by an
//!   agent.

// Test helpers outside `#[test]` functions: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use kraken_config::Pattern;
use kraken_config::registry_auth::{GrantConfig, RegistryAction};
use kraken_devcluster::{CREDENTIALS_FILE, ConfigHooks, DevCluster, Ports, REGISTRY_CERTS_DIR};
use kraken_interop::oci_layout::write_single;
use kraken_interop::{docker_engine, run, run_ok, skip};

const READER: (&str, &str) = ("reader", "reader-password");

/// A cluster whose proxy requires a login over HTTPS; `reader` may only pull.
async fn secure_cluster(dir: &Path) -> DevCluster {
    let reader_hash = bcrypt::hash(READER.1, 4).unwrap();
    let hooks = ConfigHooks {
        proxy: Some(Arc::new(move |config| {
            config
                .auth
                .users
                .insert(READER.0.to_owned(), reader_hash.clone());
            config.auth.grants = vec![
                GrantConfig {
                    users: vec!["kraken".into()],
                    repositories: Pattern::any(),
                    actions: vec![RegistryAction::Pull, RegistryAction::Push],
                },
                GrantConfig {
                    users: vec!["*".into()],
                    repositories: Pattern::any(),
                    actions: vec![RegistryAction::Pull],
                },
            ];
        })),
        ..ConfigHooks::default()
    };
    DevCluster::builder(dir.join("cluster"))
        .ports(Ports::Ephemeral)
        .secure_registry(true)
        .configure(hooks)
        .start()
        .await
        .expect("the dev cluster starts")
}

/// Runs blocking client programs off the runtime that serves the cluster.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work).await.unwrap()
}

fn credentials(cluster: &DevCluster) -> String {
    std::fs::read_to_string(cluster.dir.join(CREDENTIALS_FILE))
        .unwrap()
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pushes_with_credentials_and_is_refused_without() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = secure_cluster(dir.path()).await;
    let proxy = cluster.proxy_registry_addr();
    let agent = cluster.agent_registry_addr(0);
    let certs: PathBuf = cluster.dir.join(REGISTRY_CERTS_DIR);
    let login = credentials(&cluster);
    let layout = dir.path().join("layout");
    write_single(&layout, "v1", 2, 64 * 1024).unwrap();
    let source = format!("oci:{}:v1", layout.display());
    let target = format!("docker://127.0.0.1:{}/interop/secure:v1", proxy.port());

    let (anonymous, wrong, reader, pushed) = {
        let (certs, source, target) = (certs.clone(), source.clone(), target.clone());
        blocking(move || {
            let certs = certs.to_str().unwrap().to_owned();
            let copy = |creds: Option<&str>| {
                let mut args = vec!["copy", "--dest-cert-dir", &certs];
                if let Some(creds) = creds {
                    args.extend(["--dest-creds", creds]);
                }
                args.extend([source.as_str(), target.as_str()]);
                run("skopeo", &args)
            };
            (
                copy(None),
                copy(Some("kraken:not-the-password")),
                copy(Some(&format!("{}:{}", READER.0, READER.1))),
                copy(Some(&login)),
            )
        })
        .await
    };
    assert!(!anonymous.0, "an anonymous push must fail");
    assert!(
        anonymous.2.contains("unauthorized"),
        "the anonymous push is told to authenticate: {}",
        anonymous.2
    );
    assert!(!wrong.0, "a wrong password must fail");
    assert!(
        wrong.2.contains("invalid username/password") || wrong.2.contains("unauthorized"),
        "{}",
        wrong.2
    );
    eprintln!(
        "anonymous: {}\nwrong password: {}\nreader: {}",
        anonymous.2, wrong.2, reader.2
    );
    assert!(!reader.0, "a pull-only user must not push");
    assert!(
        reader.2.contains("denied") && reader.2.contains("`reader` may not push"),
        "{}",
        reader.2
    );
    assert!(pushed.0, "the generated login pushes: {}", pushed.2);

    // The agent (plain HTTP on loopback) serves it.
    let through_agent = format!("docker://127.0.0.1:{}/interop/secure:v1", agent.port());
    let inspected = blocking(move || {
        run_ok(
            "skopeo",
            &["inspect", "--raw", "--tls-verify=false", &through_agent],
        )
    })
    .await;
    assert!(inspected.contains("schemaVersion"), "{inspected}");
    cluster.shutdown().await;
}

/// `docker` with its own client config directory, so logins never touch the user's.
fn docker(config: &Path, args: &[&str]) -> (bool, String, String) {
    let output = Command::new("docker")
        .env("DOCKER_CONFIG", config)
        .env("DOCKER_BUILDKIT", "0")
        .args(args)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn docker_stdin(config: &Path, args: &[&str], input: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new("docker")
        .env("DOCKER_CONFIG", config)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// Trusts the dev CA for `host_port` in Docker's `certs.d`; removed again on drop.
struct TrustedCa(PathBuf);

impl TrustedCa {
    fn install(host_port: &str, ca: &Path) -> Self {
        let dir = PathBuf::from("/etc/docker/certs.d").join(host_port);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(ca, dir.join("ca.crt")).unwrap();
        Self(dir)
    }
}

impl Drop for TrustedCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_logs_in_over_tls_pushes_and_an_agent_serves_the_pull() {
    if !docker_engine() {
        skip(
            "docker_logs_in_over_tls_pushes_and_an_agent_serves_the_pull",
            "docker: skipped, no engine (`docker info` does not answer); the skopeo test \
             covers the authenticated push",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cluster = secure_cluster(dir.path()).await;
    let proxy = format!("127.0.0.1:{}", cluster.proxy_registry_addr().port());
    let agent = format!("127.0.0.1:{}", cluster.agent_registry_addr(1).port());
    let _trust = TrustedCa::install(&proxy, &cluster.dir.join(REGISTRY_CERTS_DIR).join("ca.crt"));
    let login = credentials(&cluster);
    let (user, password) = login.split_once(':').unwrap();
    let (user, password) = (user.to_owned(), password.to_owned());
    let config = dir.path().join("docker-config");
    std::fs::create_dir_all(&config).unwrap();
    let build = dir.path().join("build");
    std::fs::create_dir_all(&build).unwrap();
    let data: Vec<u8> = (0..(1u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) ^ 23).rotate_left(3) as u8)
        .collect();
    std::fs::write(build.join("a.bin"), data).unwrap();
    std::fs::write(
        build.join("Dockerfile"),
        "FROM scratch\nCOPY a.bin /a.bin\n",
    )
    .unwrap();
    let repo = format!("interop/secure-docker-{}", std::process::id());
    let pushed_name = format!("{proxy}/{repo}:v1");
    let pulled_name = format!("{agent}/{repo}:v1");

    let (wrong, login_ok, push, pull) = blocking(move || {
        let wrong = docker_stdin(
            &config,
            &["login", &proxy, "-u", &user, "--password-stdin"],
            "not-the-password",
        );
        let ok = docker_stdin(
            &config,
            &["login", &proxy, "-u", &user, "--password-stdin"],
            &password,
        );
        let built = docker(
            &config,
            &["build", "-q", "-t", &pushed_name, build.to_str().unwrap()],
        );
        assert!(built.0, "docker build: {}", built.2);
        let push = docker(&config, &["push", &pushed_name]);
        let _ = docker(&config, &["rmi", &pushed_name]);
        let pull = docker(&config, &["pull", &pulled_name]);
        let _ = docker(&config, &["rmi", &pulled_name]);
        let _ = docker(&config, &["logout", &proxy]);
        (wrong, ok, push, pull)
    })
    .await;
    assert!(!wrong.0, "a wrong password must not log in: {}", wrong.1);
    assert!(wrong.1.contains("unauthorized"), "{}", wrong.1);
    assert!(login_ok.0, "docker login: {}", login_ok.1);
    assert!(login_ok.1.contains("Login Succeeded"), "{}", login_ok.1);
    assert!(push.0, "docker push: {}{}", push.1, push.2);
    let pushed_digest = push
        .1
        .split_whitespace()
        .skip_while(|word| *word != "digest:")
        .nth(1)
        .unwrap_or_else(|| panic!("no digest in docker push output: {}", push.1))
        .to_owned();
    eprintln!(
        "docker login: {}docker push: {}docker pull: {}",
        login_ok.1, push.1, pull.1
    );
    assert!(
        pull.0,
        "docker pull through the agent: {}{}",
        pull.1, pull.2
    );
    assert!(
        pull.1.contains(&pushed_digest),
        "the agent serves what was pushed: {}",
        pull.1
    );
    cluster.shutdown().await;
}
