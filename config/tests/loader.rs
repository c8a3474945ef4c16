//! Behaviour of the loading pipeline: `extends`, substitution, error messages, validation,
//! secrets, component detection.

// Helpers outside #[test] functions panic on failure too: that is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kraken_config::{
    AgentConfig, BuildIndexConfig, Component, ConfigError, Loader, OriginConfig, TrackerConfig,
};

/// A directory of config files written by the test.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }
}

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn load<T>(path: &Path) -> Result<kraken_config::Loaded<T>, ConfigError>
where
    T: serde::de::DeserializeOwned + kraken_config::Validate,
{
    let env = env(&[]);
    Loader::with_env(&env).load(path)
}

/// The hosts every agent config needs to validate.
const AGENT_UPSTREAMS: &str = "
tracker:
  hosts:
    static: [tracker1:15003]
build_index:
  hosts:
    static: [bi1:15004]
";

fn file_name(error: &ConfigError) -> &str {
    error.file().file_name().unwrap().to_str().unwrap()
}

// ---------------------------------------------------------------------------------------------
// extends

#[test]
fn extends_merges_maps_deeply_replaces_lists_and_scalars_over_three_levels() {
    let files = Files::new();
    files.write(
        "base.yaml",
        &format!(
            "{AGENT_UPSTREAMS}
allowed_cidrs: [10.0.0.0/8, 10.1.0.0/16]
scheduler:
  seeder_tti: 10m
  connstate:
    max_open_conn: 20
    blacklist_duration: 1m
store:
  dir: /base/store
  capacity: 1GiB
"
        ),
    );
    files.write(
        "conf/mid.yaml",
        "extends: ../base.yaml
allowed_cidrs: [192.168.0.0/16]
tracker:
  hosts:
    static: [tracker9:15003]
scheduler:
  connstate:
    max_open_conn: 30
",
    );
    let top = files.write(
        "conf/top.yaml",
        "extends: mid.yaml
scheduler:
  seeder_tti: 1m
store:
  capacity: 2GiB
",
    );
    let loaded = load::<AgentConfig>(&top).unwrap();
    let config = loaded.config;
    // Scalar set at every level: the most derived wins.
    assert_eq!(config.scheduler.seeder_tti, Duration::from_secs(60));
    assert_eq!(config.store.capacity, bytesize::ByteSize::gib(2));
    // Set in the middle file, kept.
    assert_eq!(config.scheduler.connstate.max_open_conn, 30);
    // Set only in the base, in a map the others also set keys of: deep merge keeps it.
    assert_eq!(
        config.scheduler.connstate.blacklist_duration,
        Duration::from_secs(60)
    );
    assert_eq!(config.store.dir, Path::new("/base/store"));
    // Lists are replaced, not appended.
    assert_eq!(config.allowed_cidrs, ["192.168.0.0/16".parse().unwrap()]);
    assert_eq!(config.tracker.hosts.static_hosts, ["tracker9:15003"]);
    // Set nowhere: Kraken's default.
    assert_eq!(config.scheduler.conn_tti, Duration::from_secs(30));
    // The chain, most derived first, paths as written (relative to each including file).
    let names: Vec<_> = loaded
        .files
        .iter()
        .map(|p| p.strip_prefix(files.dir.path()).unwrap())
        .collect();
    assert_eq!(
        names,
        [
            Path::new("conf/top.yaml"),
            Path::new("conf/mid.yaml"),
            Path::new("conf/../base.yaml")
        ]
    );
}

#[test]
fn a_derived_file_can_replace_a_section_with_a_scalar_or_reset_it_with_null() {
    let files = Files::new();
    files.write("base.yaml", &format!("{AGENT_UPSTREAMS}\npeer_ip: 10.0.0.1\ntls:\n  ca: /ca.pem\n  cert: /c.pem\n  key: /k.pem\n"));
    let top = files.write("top.yaml", "extends: base.yaml\npeer_ip: ~\n");
    let config = load::<AgentConfig>(&top).unwrap().config;
    assert_eq!(config.peer_ip, None);
    assert!(config.tls.is_configured());
}

#[test]
fn extends_cycle_is_reported_with_the_whole_chain() {
    let files = Files::new();
    files.write("a.yaml", "extends: b.yaml\n");
    files.write("b.yaml", "extends: c.yaml\n");
    files.write("c.yaml", "extends: a.yaml\n");
    let error = load::<AgentConfig>(&files.dir.path().join("a.yaml")).unwrap_err();
    let ConfigError::ExtendsCycle { chain } = &error else {
        panic!("{error}")
    };
    let names: Vec<_> = chain
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap())
        .collect();
    assert_eq!(names, ["a.yaml", "b.yaml", "c.yaml", "a.yaml"]);
    assert!(error.to_string().contains("a.yaml → "), "{error}");

    let own = files.write("self.yaml", "extends: ./self.yaml\n");
    let error = load::<AgentConfig>(&own).unwrap_err();
    assert!(matches!(error, ConfigError::ExtendsCycle { .. }), "{error}");
}

#[test]
fn missing_extends_target_names_the_including_file_and_the_target() {
    let files = Files::new();
    files.write("base.yaml", "extends: nowhere.yaml\n");
    let top = files.write("top.yaml", "# comment\nextends: base.yaml\n");
    let error = load::<AgentConfig>(&top).unwrap_err();
    assert!(
        matches!(error, ConfigError::ExtendsUnreadable { .. }),
        "{error}"
    );
    assert_eq!(file_name(&error), "base.yaml");
    let message = error.to_string();
    assert!(
        message.contains("base.yaml:1:10: extends: cannot read"),
        "{message}"
    );
    assert!(message.contains("nowhere.yaml"), "{message}");
}

#[test]
fn extends_must_be_a_path() {
    let files = Files::new();
    let top = files.write("top.yaml", "extends: [a.yaml, b.yaml]\n");
    let error = load::<AgentConfig>(&top).unwrap_err();
    assert_eq!(error.key_path().unwrap().to_string(), "extends");
    assert!(
        error
            .to_string()
            .contains("expected the path of the base file"),
        "{error}"
    );
}

#[test]
fn missing_file_and_syntax_errors_keep_file_line_and_column() {
    let files = Files::new();
    let error = load::<AgentConfig>(&files.dir.path().join("absent.yaml")).unwrap_err();
    assert!(matches!(error, ConfigError::Read { .. }), "{error}");
    assert!(
        error
            .to_string()
            .contains("absent.yaml: cannot read the file"),
        "{error}"
    );

    let bad = files.write(
        "bad.yaml",
        "scheduler:\n  seeder_tti: 5m\n   conn_tti: 30s\n",
    );
    let error = load::<AgentConfig>(&bad).unwrap_err();
    let ConfigError::Syntax { location, .. } = &error else {
        panic!("{error}")
    };
    assert_eq!(location.line, 3, "{error}");
    assert!(
        error
            .to_string()
            .starts_with(&format!("{}:3:", bad.display())),
        "{error}"
    );

    let list = files.write("list.yaml", "- a\n- b\n");
    let error = load::<AgentConfig>(&list).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("expected a mapping of keys at the top level"),
        "{error}"
    );
}

// ---------------------------------------------------------------------------------------------
// Environment substitution

#[test]
fn env_variables_defaults_and_escapes() {
    let files = Files::new();
    let path = files.write(
        "tracker.yaml",
        "origin:
  hosts:
    static: [\"${ORIGIN_HOST}:15002\", \"${OTHER_HOST:-origin2}:15002\"]
announce_limit: \"${LIMIT:-7}\"
peerstore:
  backend: redis
  redis:
    addr: ${REDIS_ADDR:-127.0.0.1:6379}
    password: pa$${not_a_var}ss
tracing:
  service_name: ${EMPTY:-fallback}
",
    );
    let env = env(&[("ORIGIN_HOST", "origin1"), ("EMPTY", "")]);
    let config = Loader::with_env(&env)
        .load::<TrackerConfig>(&path)
        .unwrap()
        .config;
    assert_eq!(
        config.origin.hosts.static_hosts,
        ["origin1:15002", "origin2:15002"]
    );
    // Quoted in the file, but typed after substitution: a number.
    assert_eq!(config.announce_limit, 7);
    assert_eq!(config.peerstore.redis.addr, "127.0.0.1:6379");
    assert_eq!(
        config.peerstore.redis.password().unwrap().unwrap().expose(),
        "pa${not_a_var}ss"
    );
    assert_eq!(config.tracing.service_name.as_deref(), Some("fallback"));
}

#[test]
fn env_closure_is_accepted() {
    let lookup = |name: &str| (name == "PORT").then(|| "15099".to_owned());
    let config = Loader::with_env(&lookup)
        .load_str::<TrackerConfig>(
            "tracker.yaml",
            "listen:\n  grpc: 127.0.0.1:${PORT}\norigin:\n  hosts:\n    dns: origin:15002\n",
        )
        .unwrap()
        .config;
    assert_eq!(config.listen.grpc.port(), 15099);
}

#[test]
fn undefined_variable_names_the_file_the_key_and_the_variable() {
    let files = Files::new();
    files.write(
        "base.yaml",
        "origin:\n  hosts:\n    static:\n      - origin1:15002\n      - ${SECOND_ORIGIN}\n",
    );
    let top = files.write("top.yaml", "extends: base.yaml\nannounce_limit: 10\n");
    let error = load::<TrackerConfig>(&top).unwrap_err();
    let ConfigError::UndefinedVariable { variable, path, .. } = &error else {
        panic!("{error}")
    };
    assert_eq!(variable, "SECOND_ORIGIN");
    assert_eq!(path.to_string(), "origin.hosts.static[1]");
    assert_eq!(file_name(&error), "base.yaml");
    let message = error.to_string();
    assert!(
        message.contains(
            "base.yaml:5:9: origin.hosts.static[1]: environment variable `SECOND_ORIGIN` is not set"
        ),
        "{message}"
    );
    assert!(message.contains("${SECOND_ORIGIN:-default}"), "{message}");
}

#[test]
fn variables_in_values_a_derived_file_overrides_are_not_needed() {
    let files = Files::new();
    files.write("base.yaml", "origin:\n  hosts:\n    dns: ${ORIGIN_DNS}\n");
    let top = files.write(
        "top.yaml",
        "extends: base.yaml\norigin:\n  hosts:\n    dns: origin.local:15002\n",
    );
    let config = load::<TrackerConfig>(&top).unwrap().config;
    assert_eq!(
        config.origin.hosts.dns.as_deref(),
        Some("origin.local:15002")
    );
}

#[test]
fn keys_are_not_substituted_and_malformed_references_are_errors() {
    let error = Loader::with_env(&env(&[]))
        .load_str::<TrackerConfig>("t.yaml", "${KEY}: 1\n")
        .unwrap_err();
    assert!(
        error.to_string().contains("unknown field `${KEY}`"),
        "{error}"
    );

    let error = Loader::with_env(&env(&[]))
        .load_str::<TrackerConfig>("t.yaml", "log:\n  level: ${unterminated\n")
        .unwrap_err();
    assert!(
        matches!(error, ConfigError::BadSubstitution { .. }),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .contains("t.yaml:2:10: log.level: unterminated"),
        "{error}"
    );
}

// ---------------------------------------------------------------------------------------------
// Unknown keys and wrong values

#[test]
fn unknown_nested_key_names_the_derived_file_that_set_it_the_path_and_the_expected_keys() {
    let files = Files::new();
    files.write(
        "config/base.yaml",
        &format!("{AGENT_UPSTREAMS}\nscheduler:\n  connstate:\n    max_open_conn: 10\n"),
    );
    let agent = files.write(
        "config/agent.yaml",
        "extends: base.yaml\nscheduler:\n  connstate:\n    max_open_conns: 20\n",
    );
    let error = load::<AgentConfig>(&agent).unwrap_err();
    assert_eq!(file_name(&error), "agent.yaml");
    assert_eq!(
        error.key_path().unwrap().to_string(),
        "scheduler.connstate.max_open_conns"
    );
    let location = error.location().unwrap();
    assert_eq!((location.line, location.column), (4, 5));
    let expected = format!(
        "{}:4:5: scheduler.connstate.max_open_conns: unknown field `max_open_conns`, expected one \
         of `max_open_conn`, `max_mutual_conn`, `blacklist_duration`",
        agent.display()
    );
    assert_eq!(error.to_string(), expected);
}

#[test]
fn unknown_key_set_in_the_base_file_names_the_base_file() {
    let files = Files::new();
    files.write(
        "base.yaml",
        &format!(
            "{AGENT_UPSTREAMS}\nscheduler:\n  conn:\n    bandwidth:\n      egres_bits_per_sec: 1\n"
        ),
    );
    let top = files.write(
        "top.yaml",
        "extends: base.yaml\nscheduler:\n  conn:\n    bandwidth:\n      enable: true\n",
    );
    let error = load::<AgentConfig>(&top).unwrap_err();
    assert_eq!(file_name(&error), "base.yaml", "{error}");
    assert_eq!(
        error.key_path().unwrap().to_string(),
        "scheduler.conn.bandwidth.egres_bits_per_sec"
    );
    assert!(
        error
            .to_string()
            .contains("expected one of `enable`, `egress_bits_per_sec`, `ingress_bits_per_sec`"),
        "{error}"
    );
}

#[test]
fn unknown_key_in_a_list_item_and_unknown_enum_variant() {
    let files = Files::new();
    let path = files.write(
        "origin.yaml",
        "name: o:1\nbackends:\n  - namespace: .*\n    backend:\n      fs:\n        root: /x\n        rooot: /y\n",
    );
    let error = load::<OriginConfig>(&path).unwrap_err();
    assert_eq!(
        error.key_path().unwrap().to_string(),
        "backends[0].backend.fs.rooot"
    );
    assert!(error.to_string().contains(":7:9:"), "{error}");

    let path = files.write(
        "origin2.yaml",
        "name: o:1\nbackends:\n  - namespace: .*\n    backend:\n      s4: {}\n",
    );
    let error = load::<OriginConfig>(&path).unwrap_err();
    assert_eq!(error.key_path().unwrap().to_string(), "backends[0].backend");
    let message = error.to_string();
    assert!(message.contains("unknown variant `s4`, expected one of `fs`, `s3`, `gcs`, `hdfs`, `http`, `registry_blob`, `registry_tag`"), "{message}");
    assert!(message.contains(":5:7:"), "{message}");

    let path = files.write(
        "origin3.yaml",
        "name: o:1\nbackends:\n  - backend:\n      fs: {root: /x}\n",
    );
    let error = load::<OriginConfig>(&path).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("backends[0]: missing field `namespace`"),
        "{error}"
    );
}

#[test]
fn wrong_type_names_the_path_and_what_was_expected() {
    let source = format!("{AGENT_UPSTREAMS}\nscheduler:\n  connstate:\n    max_open_conn: ten\n");
    let error = Loader::with_env(&env(&[]))
        .load_str::<AgentConfig>("agent.yaml", &source)
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "agent.yaml:11:20: scheduler.connstate.max_open_conn: invalid type: string \"ten\", expected usize"
    );

    let error = Loader::with_env(&env(&[]))
        .load_str::<AgentConfig>("agent.yaml", "scheduler: 5\n")
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("scheduler: invalid type: integer `5`, expected a mapping of keys"),
        "{error}"
    );

    let error = Loader::with_env(&env(&[]))
        .load_str::<AgentConfig>("agent.yaml", "listen:\n  registry: localhost\n")
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("listen.registry: invalid socket address syntax"),
        "{error}"
    );

    let error = Loader::with_env(&env(&[]))
        .load_str::<AgentConfig>("agent.yaml", "allowed_cidrs: [10.0.0.0/33]\n")
        .unwrap_err();
    assert!(error.to_string().contains("allowed_cidrs[0]: invalid value: string \"10.0.0.0/33\", expected a network in CIDR notation"), "{error}");
}

#[test]
fn bad_duration_byte_size_and_bit_rate() {
    let load_agent = |yaml: &str| {
        Loader::with_env(&env(&[]))
            .load_str::<AgentConfig>("agent.yaml", yaml)
            .unwrap_err()
            .to_string()
    };
    let message = load_agent("scheduler:\n  seeder_tti: 5 fortnights\n");
    assert!(
        message.contains(
            "scheduler.seeder_tti: invalid value: string \"5 fortnights\", expected a duration"
        ),
        "{message}"
    );
    let message = load_agent("scheduler:\n  conn_tti: 30\n");
    assert!(
        message.contains("scheduler.conn_tti: invalid value: string \"30\", expected a duration"),
        "{message}"
    );
    let message = load_agent("store:\n  capacity: lots\n");
    assert!(
        message.contains(
            "store.capacity: invalid value: string \"lots\", expected a byte size such as `4MiB`"
        ),
        "{message}"
    );
    let message = load_agent("store:\n  capacity: -1\n");
    assert!(
        message.contains("store.capacity: invalid value: integer `-1`, expected a byte size"),
        "{message}"
    );
    let message =
        load_agent("scheduler:\n  conn:\n    bandwidth:\n      ingress_bits_per_sec: fast\n");
    assert!(message.contains("scheduler.conn.bandwidth.ingress_bits_per_sec: invalid value: string \"fast\", expected a bit rate"), "{message}");
}

#[test]
fn sizes_rates_and_durations_accept_their_usual_spellings() {
    let source = format!(
        "{AGENT_UPSTREAMS}
store:
  capacity: 4MiB
scheduler:
  conn_ttl: 1h 30m
  conn:
    bandwidth:
      egress_bits_per_sec: 800Mbit
      ingress_bits_per_sec: 1_000_000
"
    );
    let config = Loader::with_env(&env(&[]))
        .load_str::<AgentConfig>("agent.yaml", &source)
        .unwrap()
        .config;
    assert_eq!(config.store.capacity.0, 4 << 20);
    assert_eq!(config.scheduler.conn_ttl, Duration::from_secs(5400));
    assert_eq!(
        config.scheduler.conn.bandwidth.egress_bits_per_sec,
        800_000_000
    );
    assert_eq!(
        config.scheduler.conn.bandwidth.ingress_bits_per_sec,
        1_000_000
    );

    let config = Loader::with_env(&env(&[]))
        .load_str::<AgentConfig>(
            "agent.yaml",
            &format!("{AGENT_UPSTREAMS}\nstore:\n  capacity: 1GB\n"),
        )
        .unwrap()
        .config;
    assert_eq!(config.store.capacity.0, 1_000_000_000);
}

#[test]
fn empty_sections_and_empty_files_take_defaults() {
    let source = format!("{AGENT_UPSTREAMS}\ntls:\nscheduler:\n  # everything commented out\n");
    let config = Loader::with_env(&env(&[]))
        .load_str::<AgentConfig>("agent.yaml", &source)
        .unwrap()
        .config;
    assert_eq!(config.scheduler, Default::default());
    assert!(!config.tls.is_configured());
    assert_eq!(config.listen.registry, "127.0.0.1:16000".parse().unwrap());
    assert_eq!(config.allowed_cidrs.len(), 3);
    assert!(config.is_allowed("172.17.0.1".parse().unwrap()));
    assert!(!config.is_allowed("172.17.0.2".parse().unwrap()));

    // An empty file deserializes to the defaults, which then fail validation (no hosts).
    let error = Loader::with_env(&env(&[]))
        .load_str::<TrackerConfig>("tracker.yaml", "")
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "tracker.yaml:1:1: origin.hosts: no hosts: set `static` (a list of host:port) or `dns` (a name:port)"
    );
}

// ---------------------------------------------------------------------------------------------
// Validation

#[test]
fn bad_regex_is_reported_at_its_key() {
    let files = Files::new();
    let path = files.write(
        "origin.yaml",
        "name: o:1\nbackends:\n  - namespace: library/(.*\n    backend:\n      fs:\n        root: /x\n",
    );
    let error = load::<OriginConfig>(&path).unwrap_err();
    assert_eq!(
        error.key_path().unwrap().to_string(),
        "backends[0].namespace"
    );
    let message = error.to_string();
    assert!(
        message.contains(":3:16: backends[0].namespace: invalid regular expression `library/(.*`"),
        "{message}"
    );
    assert!(message.contains("unclosed group"), "{message}");

    let error = Loader::with_env(&env(&[]))
        .load_str::<BuildIndexConfig>("bi.yaml", "remotes:\n  b:\n    tags: ['[z-a]']\n")
        .unwrap_err();
    assert_eq!(error.key_path().unwrap().to_string(), "remotes.b.tags[0]");
}

#[test]
fn static_and_dns_together_are_rejected() {
    let files = Files::new();
    files.write(
        "base.yaml",
        "origin:\n  hosts:\n    dns: origin.local:15002\n",
    );
    let top = files.write(
        "top.yaml",
        "extends: base.yaml\norigin:\n  hosts:\n    static: [o1:15002]\n",
    );
    let error = load::<TrackerConfig>(&top).unwrap_err();
    assert!(matches!(error, ConfigError::Validation { .. }), "{error}");
    assert_eq!(error.key_path().unwrap().to_string(), "origin.hosts");
    assert!(
        error
            .to_string()
            .ends_with("origin.hosts: set either `static` or `dns`, not both"),
        "{error}"
    );
    // The merged `hosts` mapping was last written by the derived file.
    assert_eq!(file_name(&error), "top.yaml");

    let error = Loader::with_env(&env(&[]))
        .load_str::<TrackerConfig>("t.yaml", "origin:\n  hosts:\n    static: [origin1]\n")
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("t.yaml:3:14: origin.hosts.static[0]: `origin1` is not `host:port`"),
        "{error}"
    );
}

#[test]
fn validation_errors_name_the_file_that_set_the_value() {
    let files = Files::new();
    files.write("base.yaml", "hashring:\n  max_replica: 0\n");
    let top = files.write(
        "top.yaml",
        "extends: base.yaml\nname: o1:15002\ncluster:\n  hosts:\n    static: [o1:15002]\n",
    );
    let error = load::<OriginConfig>(&top).unwrap_err();
    assert_eq!(file_name(&error), "base.yaml");
    assert!(
        error
            .to_string()
            .ends_with("base.yaml:2:16: hashring.max_replica: must be at least 1"),
        "{error}"
    );
}

#[test]
fn s3_user_must_exist_in_auth() {
    let origin = "name: o1:15002
cluster:
  hosts:
    static: [o1:15002]
backends:
  - namespace: .*
    backend:
      s3:
        region: us-east-1
        bucket: b
        username: kraken-user
auth:
  s3:
    other-user:
      aws_access_key_id: AKIA
      aws_secret_access_key_file: /run/secrets/key
";
    let error = Loader::with_env(&env(&[]))
        .load_str::<OriginConfig>("origin.yaml", origin)
        .unwrap_err();
    assert_eq!(
        error.key_path().unwrap().to_string(),
        "backends[0].backend.s3.username"
    );
    assert!(error.to_string().contains("origin.yaml:11:19: backends[0].backend.s3.username: user `kraken-user` has no credentials under `auth.s3` (known users: `other-user`)"), "{error}");

    let fixed = origin.replace("other-user", "kraken-user");
    let config = Loader::with_env(&env(&[]))
        .load_str::<OriginConfig>("origin.yaml", &fixed)
        .unwrap()
        .config;
    assert!(config.auth.s3.contains_key("kraken-user"));
}

#[test]
fn more_semantic_checks() {
    let check = |yaml: &str| {
        Loader::with_env(&env(&[]))
            .load_str::<OriginConfig>("origin.yaml", yaml)
            .unwrap_err()
            .to_string()
    };
    let base = "name: o1:15002\ncluster:\n  hosts:\n    static: [o1:15002]\n";

    let message = check(&format!(
        "{base}metainfogen:\n  piece_lengths:\n    1MiB: 64KiB\n"
    ));
    assert!(
        message.contains("metainfogen.piece_lengths: piece length table has no entry for size 0"),
        "{message}"
    );

    let message = check(&format!(
        "{base}backends:\n  - namespace: .*\n    backend: {{fs: {{root: /a}}}}\n  - namespace: x\n    backend: {{fs: {{root: /b}}}}\n"
    ));
    assert!(
        message.contains("backends[1].namespace: this rule can never match"),
        "{message}"
    );

    let message = check(&format!("{base}store:\n  cache_cleanup:\n    tti: 0s\n"));
    assert!(
        message.contains("store.cache_cleanup.tti: must be longer than 0s"),
        "{message}"
    );

    let message = check("name: o9:15002\ncluster:\n  hosts:\n    static: [o1:15002]\n");
    assert!(
        message.contains("name: `o9:15002` is not in cluster.hosts.static"),
        "{message}"
    );

    let message = check(&format!(
        "{base}backends:\n  - namespace: .*\n    backend:\n      http:\n        download_url: http://x/blob\n"
    ));
    assert!(
        message.contains("backends[0].backend.http.download_url: must contain `%s` exactly once"),
        "{message}"
    );

    let message = check(&format!(
        "{base}backends:\n  - namespace: .*\n    backend:\n      registry_tag:\n        address: index.docker.io\n"
    ));
    assert!(
        message.contains("backends[0].backend.registry_tag: stores tags"),
        "{message}"
    );

    let message = check(&format!("{base}tls:\n  cert: /c.pem\n"));
    assert!(message.contains("tls.ca: missing"), "{message}");

    let message = check(&format!(
        "{base}auth:\n  s3:\n    u:\n      aws_access_key_id: AKIA\n      aws_secret_access_key: x\n      aws_secret_access_key_file: /y\n"
    ));
    assert!(message.contains("auth.s3.u.aws_secret_access_key: set either `aws_secret_access_key` or `aws_secret_access_key_file`, not both"), "{message}");

    let message = Loader::with_env(&env(&[]))
        .load_str::<BuildIndexConfig>(
            "bi.yaml",
            "origin:\n  hosts:\n    dns: o:1\nbackends:\n  - namespace: .*\n    backend:\n      s3:\n        region: r\n        bucket: b\n",
        )
        .unwrap_err()
        .to_string();
    assert!(
        message.contains(
            "backends[0].backend.s3.name_path: `sharded_docker_blob` names blobs by digest"
        ),
        "{message}"
    );

    let message = Loader::with_env(&env(&[]))
        .load_str::<AgentConfig>(
            "agent.yaml",
            &format!(
                "{AGENT_UPSTREAMS}listen:\n  registry: 0.0.0.0:16000\n  grpc: 127.0.0.1:16000\n"
            ),
        )
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("listen.grpc: 127.0.0.1:16000 clashes with listen.registry"),
        "{message}"
    );
}

// ---------------------------------------------------------------------------------------------
// Secrets

#[test]
fn secrets_never_appear_in_debug_or_printed_configs() {
    let files = Files::new();
    let key_file = files.write("secrets/gcs.json", "{\"private_key\": \"FILE-SECRET\"}\n");
    let origin = format!(
        "name: o1:15002
cluster:
  hosts:
    static: [o1:15002]
backends:
  - namespace: ^registry/
    backend:
      registry_blob:
        address: index.docker.io
        security:
          basic:
            username: puller
            password: REGISTRY-PASSWORD
  - namespace: .*
    backend:
      gcs:
        bucket: b
        username: g
auth:
  s3:
    kraken-user:
      aws_access_key_id: AKIA
      aws_secret_access_key: ${{S3_SECRET}}
  gcs:
    g:
      access_blob_file: {}
",
        key_file.display()
    );
    let env = env(&[("S3_SECRET", "ENV-SECRET")]);
    let loaded = Loader::with_env(&env)
        .load_str::<OriginConfig>("origin.yaml", &origin)
        .unwrap();
    let config = &loaded.config;

    let s3 = &config.auth.s3["kraken-user"];
    assert_eq!(
        s3.secret_access_key().unwrap().unwrap().expose(),
        "ENV-SECRET"
    );
    let gcs = &config.auth.gcs["g"];
    assert_eq!(
        gcs.access_blob().unwrap().unwrap().expose(),
        "{\"private_key\": \"FILE-SECRET\"}"
    );
    let kraken_config::backend::BackendKind::RegistryBlob(registry) = &config.backends[0].backend
    else {
        panic!()
    };
    assert_eq!(
        registry
            .security
            .basic
            .password()
            .unwrap()
            .unwrap()
            .expose(),
        "REGISTRY-PASSWORD"
    );

    let any = kraken_config::AnyConfig::Origin(Box::new(config.clone()));
    for printed in [
        format!("{config:?}"),
        format!("{any:#?}"),
        any.to_yaml().unwrap(),
        any.to_json_pretty().unwrap(),
    ] {
        for secret in ["ENV-SECRET", "REGISTRY-PASSWORD", "FILE-SECRET"] {
            assert!(!printed.contains(secret), "{secret} leaked:\n{printed}");
        }
        assert!(printed.contains("<redacted>"), "{printed}");
    }
}

// ---------------------------------------------------------------------------------------------
// Components

#[test]
fn component_is_guessed_from_the_file_name_or_its_directory() {
    let cases = [
        ("origin.yaml", Some(Component::Origin)),
        ("/etc/kraken/agent-dev.yaml", Some(Component::Agent)),
        ("build-index.yaml", Some(Component::BuildIndex)),
        ("build_index.yml", Some(Component::BuildIndex)),
        ("prod.tracker.yaml", Some(Component::Tracker)),
        ("config/proxy/development.yaml", Some(Component::Proxy)),
        ("config/build-index/base.yaml", Some(Component::BuildIndex)),
        ("origin/agent.yaml", Some(Component::Agent)),
        ("config.yaml", None),
        ("originator.yaml", None),
        ("agent-and-origin.yaml", None),
    ];
    for (path, expected) in cases {
        assert_eq!(
            Component::guess_from_path(Path::new(path)),
            expected,
            "{path}"
        );
    }
    assert_eq!(
        "build_index".parse::<Component>().unwrap(),
        Component::BuildIndex
    );
    assert_eq!(Component::BuildIndex.to_string(), "build-index");
    assert!(
        "cache"
            .parse::<Component>()
            .unwrap_err()
            .to_string()
            .contains("expected one of agent")
    );
}

#[test]
fn load_any_picks_the_component_schema() {
    let files = Files::new();
    let path = files.write("tracker.yaml", "origin:\n  hosts:\n    dns: origin:15002\n");
    let loaded = kraken_config::load_any(Component::Tracker, &path).unwrap();
    assert_eq!(loaded.config.component(), Component::Tracker);
    // The same file is not a valid agent config: `origin` is not an agent key.
    let error = kraken_config::load_any(Component::Agent, &path).unwrap_err();
    assert!(
        error.to_string().contains("unknown field `origin`"),
        "{error}"
    );
}
