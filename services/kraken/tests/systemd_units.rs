//! The systemd units in `deploy/systemd/` (see its README): `systemd-analyze verify` has nothing
//! to say about them, `systemd-analyze security --offline` rates each at or below the exposure
//! the README records, and every unit keeps its sandboxing, its writable paths, its command line
//! and the start order. When `deploy/config/<role>.yaml` exists, every directory it makes the
//! component write lies under the unit's state directory, and nothing it reads is hidden by the
//! sandbox.
//!
//! Nothing is installed: verify runs on copies in a temp dir whose `ExecStart=` names the binary
//! cargo built (verify refuses a unit whose binary does not exist). The units are not started:
//! that needs systemd as PID 1, which test machines and containers usually lack.

// Test helpers outside `#[test]` functions: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const ROLES: [&str; 5] = ["origin", "tracker", "build-index", "proxy", "agent"];

/// Where the units expect the binary (README: install).
const INSTALLED_BINARY: &str = "/usr/local/bin/kraken";

/// The exposure (`systemd-analyze security`) a unit may never exceed, whatever the README says:
/// "OK" in systemd's words.
const EXPOSURE_CEILING: f64 = 2.0;

/// Lines every unit has in `[Service]`, with the value that must take effect (the last
/// assignment). Explained line by line in deploy/systemd/README.md.
const SERVICE_LINES: &[(&str, &str)] = &[
    ("Type", "exec"),
    ("User", "kraken"),
    ("Group", "kraken"),
    ("Restart", "on-failure"),
    ("KillSignal", "SIGTERM"),
    ("UMask", "0077"),
    ("NoNewPrivileges", "yes"),
    ("ProtectSystem", "strict"),
    ("ProtectHome", "yes"),
    ("PrivateTmp", "yes"),
    ("PrivateDevices", "yes"),
    ("PrivateMounts", "yes"),
    ("ProtectHostname", "yes"),
    ("ProtectClock", "yes"),
    ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectKernelLogs", "yes"),
    ("ProtectControlGroups", "yes"),
    ("ProtectProc", "invisible"),
    ("RestrictNamespaces", "yes"),
    ("RestrictRealtime", "yes"),
    ("RestrictSUIDSGID", "yes"),
    ("RemoveIPC", "yes"),
    ("LockPersonality", "yes"),
    ("MemoryDenyWriteExecute", "yes"),
    ("SystemCallArchitectures", "native"),
    ("SystemCallErrorNumber", "EPERM"),
    ("DevicePolicy", "closed"),
];

fn units_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/systemd")
}

fn unit_name(role: &str) -> String {
    format!("kraken-{role}.service")
}

fn unit_text(role: &str) -> String {
    let path = units_dir().join(unit_name(role));
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The component's state directory, or `None` for the tracker, which writes nothing.
fn state_dir(role: &str) -> Option<String> {
    (role != "tracker").then(|| format!("/var/lib/kraken/{role}"))
}

/// The unit's `ReadWritePaths=`, as written: the state directory, and for the components with an
/// `fs` storage backend in deploy/config the shared backend directory (`-`: absent when the
/// backend is object storage).
fn writable_paths(role: &str) -> Vec<String> {
    let backend = match role {
        "origin" => Some("-/var/lib/kraken/backend/blobs"),
        "build-index" => Some("-/var/lib/kraken/backend/tags"),
        _ => None,
    };
    state_dir(role)
        .into_iter()
        .chain(backend.map(str::to_owned))
        .collect()
}

/// Values for the `${VAR}`s without a default in deploy/config/<role>.yaml, as the operator's
/// /etc/kraken/<role>.env would give them (deploy/systemd/README.md: install).
fn required_env(role: &str) -> &'static [(&'static str, &'static str)] {
    match role {
        "origin" => &[("ORIGIN_NAME", "origin1:15002")],
        _ => &[],
    }
}

/// The units a role's unit is ordered after (same host only; see the units' header comment).
fn ordered_after(role: &str) -> &'static [&'static str] {
    match role {
        "origin" => &[],
        "tracker" | "build-index" => &["kraken-origin.service"],
        "proxy" => &["kraken-origin.service", "kraken-build-index.service"],
        "agent" => &[
            "kraken-tracker.service",
            "kraken-origin.service",
            "kraken-build-index.service",
        ],
        other => panic!("unknown role {other}"),
    }
}

/// A unit file as systemd reads it: `(section, key, value)` in file order, comments dropped,
/// continuation lines joined.
#[derive(Debug)]
struct Unit {
    name: String,
    entries: Vec<(String, String, String)>,
}

impl Unit {
    fn parse(name: &str, text: &str) -> Unit {
        let mut entries = Vec::new();
        let mut section = String::new();
        let mut pending = String::new();
        for raw in text.lines() {
            let line = raw.trim();
            if pending.is_empty() && (line.is_empty() || line.starts_with(['#', ';'])) {
                continue;
            }
            if let Some(continued) = line.strip_suffix('\\') {
                pending.push_str(continued);
                pending.push(' ');
                continue;
            }
            let line = std::mem::take(&mut pending) + line;
            if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = header.to_owned();
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("{name}: not a `key=value` line: {line}"));
            entries.push((
                section.clone(),
                key.trim().to_owned(),
                value.trim().to_owned(),
            ));
        }
        Unit {
            name: name.to_owned(),
            entries,
        }
    }

    fn values(&self, section: &str, key: &str) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|(s, k, _)| s == section && k == key)
            .map(|(_, _, v)| v.as_str())
            .collect()
    }

    /// The value of a single-valued key that takes effect: the last assignment.
    fn last(&self, section: &str, key: &str) -> Option<&str> {
        self.values(section, key).last().copied()
    }

    /// The items of a list-valued key that take effect: assignments accumulate, an empty one
    /// resets the list.
    fn list(&self, section: &str, key: &str) -> Vec<&str> {
        let mut items = Vec::new();
        for value in self.values(section, key) {
            if value.is_empty() {
                items.clear();
            }
            items.extend(value.split_whitespace());
        }
        items
    }
}

fn unit(role: &str) -> Unit {
    Unit::parse(&unit_name(role), &unit_text(role))
}

/// Whether `systemd-analyze` runs; if not, the test records a loud skip (tests/run.sh installs
/// it, so this is a machine without Debian's `systemd` package).
fn have_systemd_analyze(test: &str) -> bool {
    if kraken_interop::have("systemd-analyze") {
        true
    } else {
        kraken_interop::skip(test, "systemd-analyze not installed");
        false
    }
}

fn analyze(args: &[&str]) -> Output {
    Command::new("systemd-analyze")
        .args(args)
        .output()
        .expect("spawn systemd-analyze")
}

fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Copies of the units in a fresh temp dir, `ExecStart=` naming the binary cargo built: verify
/// insists the binary exists, and nothing may be installed into /usr/local for a test.
fn units_with_built_binary() -> (tempfile::TempDir, Vec<PathBuf>) {
    let dir = tempfile::Builder::new()
        .prefix("kraken-systemd-units.")
        .tempdir()
        .unwrap();
    // A link of known, space-free name: ExecStart= splits its command line at whitespace.
    let binary = dir.path().join("kraken");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_kraken"), &binary).unwrap();
    let binary = binary.to_str().unwrap();
    assert!(
        !binary.contains(char::is_whitespace),
        "temp dir path {binary} has whitespace; set TMPDIR"
    );
    let files = ROLES
        .iter()
        .map(|role| {
            let text = unit_text(role);
            let exec = format!("ExecStart={INSTALLED_BINARY} ");
            assert_eq!(
                text.matches(&exec).count(),
                1,
                "{}: one `{exec}…` line expected",
                unit_name(role)
            );
            let path = dir.path().join(unit_name(role));
            fs::write(&path, text.replace(&exec, &format!("ExecStart={binary} "))).unwrap();
            path
        })
        .collect();
    (dir, files)
}

/// What `systemd-analyze verify` may print that is not about our units: warnings from the
/// distribution's own unit files it loads as dependencies (network-online.target,
/// multi-user.target, …), which name their file under a system unit directory. They depend on
/// what the machine has installed, not on this repository. Anything else is a finding.
fn about_a_system_unit(line: &str) -> bool {
    const SYSTEM_UNIT_DIRS: [&str; 5] = [
        "/lib/systemd/",
        "/usr/lib/systemd/",
        "/etc/systemd/",
        "/run/systemd/",
        "/usr/local/lib/systemd/",
    ];
    SYSTEM_UNIT_DIRS.iter().any(|dir| line.starts_with(dir)) && !line.contains("kraken")
}

#[test]
fn systemd_analyze_verify_finds_nothing() {
    if !have_systemd_analyze("systemd_units_verify") {
        return;
    }
    let (_dir, files) = units_with_built_binary();
    let mut args = vec!["verify", "--man=no", "--recursive-errors=no"];
    args.extend(files.iter().map(|f| f.to_str().unwrap()));
    let out = analyze(&args);
    let text = output_text(&out);
    let findings: Vec<&str> = text
        .lines()
        .filter(|line| !line.trim().is_empty() && !about_a_system_unit(line))
        .collect();
    assert!(
        out.status.success() && findings.is_empty(),
        "systemd-analyze {} ({}):\n{}",
        args.join(" "),
        out.status,
        text
    );
    // Verify ignores what it does not understand with a warning (caught above) but cannot know
    // whether the binary takes the arguments: ask it.
    for role in ROLES {
        let out = Command::new(env!("CARGO_BIN_EXE_kraken"))
            .args([role, "--help"])
            .output()
            .unwrap();
        let help = output_text(&out);
        assert!(
            out.status.success() && help.contains("--config"),
            "`kraken {role} --help` ({}):\n{help}",
            out.status
        );
    }
}

/// The exposure per unit recorded in the README's "Exposure scores" table
/// (`| `kraken-origin.service` | 1.2 OK |`).
fn recorded_exposure() -> BTreeMap<String, f64> {
    let readme = fs::read_to_string(units_dir().join("README.md")).unwrap();
    let mut recorded = BTreeMap::new();
    for line in readme.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if let [_, unit, score, _] = cells[..]
            && let Some(unit) = unit
                .strip_prefix('`')
                .and_then(|u| u.strip_suffix(".service`"))
            && let Some(score) = score.split_whitespace().next()
            && let Ok(score) = score.parse::<f64>()
        {
            recorded.insert(format!("{unit}.service"), score);
        }
    }
    recorded
}

#[test]
fn security_exposure_stays_at_or_below_the_recorded_score() {
    if !have_systemd_analyze("systemd_units_security") {
        return;
    }
    let recorded = recorded_exposure();
    let (_dir, files) = units_with_built_binary();
    for (role, file) in ROLES.iter().zip(&files) {
        let name = unit_name(role);
        let limit = *recorded.get(&name).unwrap_or_else(|| {
            panic!("deploy/systemd/README.md records no exposure score for {name}")
        });
        assert!(
            limit <= EXPOSURE_CEILING,
            "README records {limit} for {name}, above {EXPOSURE_CEILING}"
        );
        let out = analyze(&[
            "security",
            "--offline=true",
            "--no-pager",
            file.to_str().unwrap(),
        ]);
        let text = output_text(&out);
        if !out.status.success() && text.contains("--offline") {
            // systemd < 250 has no offline review of a unit file.
            kraken_interop::skip(
                "systemd_units_security",
                "systemd-analyze cannot review a unit file offline (systemd < 250)",
            );
            return;
        }
        let prefix = format!("Overall exposure level for {name}:");
        let score = text
            .lines()
            .find_map(|line| line.split_once(&prefix))
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|score| score.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no `{prefix}` line ({}):\n{text}", out.status));
        assert!(
            score <= limit,
            "{name}: exposure {score} is above the {limit} recorded in deploy/systemd/README.md; \
             the unit lost hardening:\n{text}"
        );
        eprintln!("{name}: exposure {score} (recorded {limit})");
    }
}

#[test]
fn every_unit_keeps_its_hardening() {
    for role in ROLES {
        let unit = unit(role);
        let name = &unit.name;
        let svc = |key: &str| unit.last("Service", key);

        for (key, want) in SERVICE_LINES {
            assert_eq!(svc(key), Some(*want), "{name}: [Service] {key}={want}");
        }
        assert_eq!(
            svc("ExecStart"),
            Some(format!("{INSTALLED_BINARY} {role} --config /etc/kraken/{role}.yaml").as_str()),
            "{name}: ExecStart"
        );
        // `+`, `!` and `!!` run a command outside the sandbox or as root.
        for (_, key, value) in unit.entries.iter().filter(|(s, ..)| s == "Service") {
            if key.starts_with("Exec") {
                assert!(
                    !value.starts_with(['+', '!', '@', ':']),
                    "{name}: {key}={value} escapes the sandbox"
                );
            }
        }
        assert!(
            svc("DynamicUser").is_none(),
            "{name}: runs as the static kraken user (README: why not DynamicUser)"
        );
        assert!(svc("TimeoutStopSec").is_some(), "{name}: TimeoutStopSec");
        let nofile: u64 = svc("LimitNOFILE")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{name}: LimitNOFILE as a number"));
        let least = if matches!(role, "origin" | "proxy" | "agent") {
            1_048_576
        } else {
            65_536
        };
        assert!(nofile >= least, "{name}: LimitNOFILE={nofile} < {least}");

        let families: BTreeSet<&str> = unit
            .list("Service", "RestrictAddressFamilies")
            .into_iter()
            .collect();
        assert_eq!(
            families,
            BTreeSet::from(["AF_INET", "AF_INET6", "AF_UNIX"]),
            "{name}: RestrictAddressFamilies"
        );
        assert_eq!(
            unit.list("Service", "SystemCallFilter"),
            ["@system-service", "~@privileged", "@resources"],
            "{name}: SystemCallFilter"
        );
        for key in ["CapabilityBoundingSet", "AmbientCapabilities"] {
            let values = unit.values("Service", key);
            assert!(
                !values.is_empty() && values.iter().all(|v| v.is_empty()),
                "{name}: `{key}=` (empty) and nothing else, got {values:?}"
            );
        }

        // Writable: the state directory (and a shared fs backend) and nothing else; nothing for
        // the tracker.
        let state = state_dir(role);
        assert_eq!(
            unit.list("Service", "ReadWritePaths"),
            writable_paths(role),
            "{name}: ReadWritePaths"
        );
        // A network mount under a writable path must be there before the component starts.
        let mounts = unit.list("Unit", "RequiresMountsFor");
        for path in writable_paths(role) {
            if let Some(backend) = path.strip_prefix('-') {
                assert!(
                    mounts.contains(&backend),
                    "{name}: RequiresMountsFor={backend}"
                );
            }
        }
        let state_directory = state
            .as_deref()
            .map(|dir| dir.trim_start_matches("/var/lib/"));
        assert_eq!(
            unit.list("Service", "StateDirectory"),
            state_directory.into_iter().collect::<Vec<_>>(),
            "{name}: StateDirectory"
        );
        if state.is_some() {
            assert_eq!(svc("StateDirectoryMode"), Some("0750"), "{name}");
        }
        for key in [
            "ReadWriteDirectories",
            "BindPaths",
            "CacheDirectory",
            "LogsDirectory",
        ] {
            assert!(svc(key).is_none(), "{name}: {key} makes more writable");
        }

        // Start order: network first, then the components upstream on this host; never a hard
        // dependency between components (they run on different hosts).
        let after = unit.list("Unit", "After");
        for target in ["network-online.target", "time-sync.target"] {
            assert!(after.contains(&target), "{name}: After={target}");
        }
        assert!(
            unit.list("Unit", "Wants")
                .contains(&"network-online.target"),
            "{name}: Wants=network-online.target"
        );
        let components: BTreeSet<&str> = after
            .iter()
            .copied()
            .filter(|u| u.starts_with("kraken-"))
            .collect();
        assert_eq!(
            components,
            ordered_after(role).iter().copied().collect(),
            "{name}: After= other components"
        );
        for key in ["Requires", "Requisite", "BindsTo", "PartOf", "Wants"] {
            for dep in unit.list("Unit", key) {
                assert!(!dep.starts_with("kraken-"), "{name}: {key}={dep}");
            }
        }
        assert_eq!(
            unit.last("Install", "WantedBy"),
            Some("multi-user.target"),
            "{name}: WantedBy"
        );
    }
}

/// Every `(key path, value)` under `value` whose last key is one of `keys`.
fn find_keys<'a>(
    value: &'a serde_json::Value,
    path: &str,
    keys: &dyn Fn(&str) -> bool,
    found: &mut Vec<(String, &'a str)>,
) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, child) in map {
                let child_path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                if keys(key)
                    && let Some(text) = child.as_str()
                {
                    found.push((child_path.clone(), text));
                }
                find_keys(child, &child_path, keys, found);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                find_keys(child, &format!("{path}[{i}]"), keys, found);
            }
        }
        _ => {}
    }
}

/// `KEY=value` lines of an env file (the unit's `EnvironmentFile=`), comments skipped.
fn env_file(path: &Path) -> Vec<(String, String)> {
    let Ok(text) = fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
        .collect()
}

#[test]
fn deploy_configs_write_only_under_the_state_directories() {
    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/config");
    for role in ROLES {
        let file = configs.join(format!("{role}.yaml"));
        if !file.exists() {
            kraken_interop::skip(
                "systemd_units_deploy_configs",
                &format!("no deploy/config/{role}.yaml: its directories are not checked"),
            );
            continue;
        }
        // The effective config as the component computes it, defaults included, with the
        // values the unit's EnvironmentFile= supplies; the test's own environment must not leak
        // into `${VAR:-default}`.
        let mut command = Command::new(env!("CARGO_BIN_EXE_kraken"));
        command
            .args(["config", "check", "--schema-only", "--format", "json"])
            .args(["--component", role])
            .arg(&file)
            .env_clear()
            .envs(required_env(role).iter().copied())
            .envs(env_file(&configs.join(format!("{role}.env"))));
        let out = command.output().unwrap();
        assert!(
            out.status.success(),
            "kraken config check {}:\n{}",
            file.display(),
            output_text(&out)
        );
        let config: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

        let mut dirs = Vec::new();
        find_keys(&config, "", &|k| k == "dir" || k == "root", &mut dirs);
        // The unit's own list, as systemd will apply it.
        let unit = unit(role);
        let writable = unit.list("Service", "ReadWritePaths");
        for (key, dir) in &dirs {
            let inside = writable
                .iter()
                .any(|path| Path::new(dir).starts_with(path.trim_start_matches('-')));
            assert!(
                inside,
                "{}: {key} = {dir} is under none of kraken-{role}.service's ReadWritePaths {writable:?}",
                file.display(),
            );
        }
        eprintln!("deploy/config/{role}.yaml writes {dirs:?}");
        if role != "tracker" {
            assert!(!dirs.is_empty(), "{}: found no directories", file.display());
        }

        // What it reads must be visible in the sandbox: ProtectHome hides /home, /root and
        // /run/user, PrivateTmp replaces /tmp and /var/tmp.
        let mut files = Vec::new();
        find_keys(
            &config,
            "",
            &|k| matches!(k, "ca" | "cert" | "key") || k.ends_with("_file"),
            &mut files,
        );
        for (key, path) in &files {
            for hidden in ["/home", "/root", "/run/user", "/tmp", "/var/tmp"] {
                assert!(
                    !Path::new(path).starts_with(hidden),
                    "{}: {key} = {path} is hidden from the unit's sandbox",
                    file.display()
                );
            }
        }
    }
}
