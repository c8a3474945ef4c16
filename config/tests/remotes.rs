//! `remotes:` and `trusted_remotes:` of the build-index and the origin: the shapes that load,
//! the ones refused, and that each refusal names its key and what to write instead.

// Helpers outside #[test] functions panic on failure too: that is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::Path;

use kraken_config::remote::RemoteEgress;
use kraken_config::{BuildIndexConfig, ConfigError, Loader, OriginConfig};

const BUILD_INDEX: &str = "
tag_store:
  write_through: false
origin:
  hosts:
    static: [origin1:15002]
";

const ORIGIN: &str = "
name: origin1:15002
cluster:
  hosts:
    static: [origin1:15002]
";

fn load<T>(base: &str, text: &str) -> Result<T, ConfigError>
where
    T: serde::de::DeserializeOwned + kraken_config::Validate,
{
    let env = HashMap::new();
    Loader::with_env(&env)
        .load_str::<T>("component.yaml", &format!("{base}{text}"))
        .map(|loaded| loaded.config)
}

/// The refusal's key path and message.
fn refused<T>(base: &str, text: &str) -> (String, String)
where
    T: serde::de::DeserializeOwned + kraken_config::Validate + std::fmt::Debug,
{
    let error = load::<T>(base, text).unwrap_err();
    let path = error.key_path().map(|p| p.to_string()).unwrap_or_default();
    (path, error.to_string())
}

const A_REMOTE: &str = "
remotes:
  us-west:
    build_index:
      hosts:
        static: [bi.west:15004]
    tags: ['^release/', 'library/.*:stable']
    tls:
      ca: /etc/kraken/us-west-ca.pem
      server_name: build-index.west
trusted_remotes:
  eu:
    ca: /etc/kraken/eu-ca.pem
    tags: ['^release/']
  asia:
    ca: /etc/kraken/asia-ca.pem
";

#[test]
fn a_build_index_loads_named_remotes_and_trusted_remotes() {
    let config = load::<BuildIndexConfig>(BUILD_INDEX, A_REMOTE).unwrap();
    let west = &config.remotes["us-west"];
    assert_eq!(west.build_index.hosts.static_hosts, ["bi.west:15004"]);
    assert_eq!(west.tls.ca, Path::new("/etc/kraken/us-west-ca.pem"));
    assert_eq!(west.tls.server_name.as_deref(), Some("build-index.west"));
    assert_eq!(west.tls.cert, None);
    // Tags route to remotes by name.
    assert_eq!(
        config.remotes_for("release/app:1").collect::<Vec<_>>(),
        ["us-west"]
    );
    assert_eq!(config.remotes_for("team/app:1").count(), 0);
    // A trusted remote may put what its rules allow; `tags` defaults to every tag.
    assert!(config.trusted_remotes["eu"].may_put("release/app:1"));
    assert!(!config.trusted_remotes["eu"].may_put("team/app:1"));
    assert!(config.trusted_remotes["asia"].may_put("team/app:1"));
    // In name order, as TrustDomains::load takes them.
    let cas = config.trusted_remote_cas();
    assert_eq!(cas[0].0, "asia");
    assert_eq!(cas[1].1, Path::new("/etc/kraken/eu-ca.pem"));
}

#[test]
fn the_printed_config_loads_back_with_its_remotes() {
    let config = load::<BuildIndexConfig>(BUILD_INDEX, A_REMOTE).unwrap();
    let printed = kraken_config::component::to_yaml(&config).unwrap();
    assert_eq!(load::<BuildIndexConfig>("", &printed).unwrap(), config);
}

#[test]
fn the_old_remotes_shape_is_refused_with_the_new_one_named() {
    let (path, message) = refused::<BuildIndexConfig>(
        BUILD_INDEX,
        "remotes:\n  remote.example.com:15004:\n    - ^release/\n",
    );
    assert_eq!(path, "remotes.remote.example.com:15004");
    assert!(
        message.contains("old `remotes: {host:port: [tag regexes]}` shape"),
        "{message}"
    );
    assert!(
        message.contains("remotes: {NAME: {build_index: {hosts:"),
        "{message}"
    );
    assert!(
        message.contains("component.yaml:"),
        "names the file: {message}"
    );
}

#[test]
fn remote_names_are_lowercase_words() {
    for bad in ["US-West", "b.example", "a_b"] {
        let text = format!(
            "remotes:\n  {bad}:\n    build_index: {{hosts: {{static: [b:1]}}}}\n    tags: [.*]\n    tls: {{ca: /ca.pem}}\n"
        );
        let (path, message) = refused::<BuildIndexConfig>(BUILD_INDEX, &text);
        assert_eq!(path, format!("remotes.{bad}"));
        assert!(
            message.contains("is not a remote cluster name"),
            "{message}"
        );
    }
    let (path, _) = refused::<OriginConfig>(ORIGIN, "trusted_remotes:\n  B:\n    ca: /b.pem\n");
    assert_eq!(path, "trusted_remotes.B");
}

#[test]
fn a_remote_needs_hosts_tags_and_a_ca() {
    let (path, message) = refused::<BuildIndexConfig>(
        BUILD_INDEX,
        "remotes:\n  b:\n    tags: [.*]\n    tls: {ca: /ca.pem}\n",
    );
    assert_eq!(path, "remotes.b.build_index.hosts");
    assert!(message.contains("no hosts"), "{message}");

    let (path, message) = refused::<BuildIndexConfig>(
        BUILD_INDEX,
        "remotes:\n  b:\n    build_index: {hosts: {static: [b:1]}}\n    tls: {ca: /ca.pem}\n",
    );
    assert_eq!(path, "remotes.b.tags");
    assert!(message.contains("no rules"), "{message}");

    let (path, message) = refused::<BuildIndexConfig>(
        BUILD_INDEX,
        "remotes:\n  b:\n    build_index: {hosts: {static: [b:1]}}\n    tags: [.*]\n",
    );
    assert_eq!(path, "remotes.b.tls.ca");
    assert!(message.contains("the remote cluster's CA"), "{message}");

    let (path, _) = refused::<BuildIndexConfig>(BUILD_INDEX, "trusted_remotes:\n  a: {}\n");
    assert_eq!(path, "trusted_remotes.a.ca");
    let (path, message) = refused::<BuildIndexConfig>(
        BUILD_INDEX,
        "trusted_remotes:\n  a: {ca: /a.pem, tags: []}\n",
    );
    assert_eq!(path, "trusted_remotes.a.tags");
    assert!(message.contains("no rules"), "{message}");
    // A remote with nothing under it is reported key by key, not as a type error.
    let (path, _) = refused::<BuildIndexConfig>(BUILD_INDEX, "remotes:\n  b:\n");
    assert_eq!(path, "remotes.b.build_index.hosts");
    // Unknown keys are refused inside a remote too.
    let (path, message) = refused::<BuildIndexConfig>(
        BUILD_INDEX,
        "remotes:\n  b:\n    build_index: {hosts: {static: [b:1]}}\n    tags: [.*]\n    tls: {ca: /ca.pem}\n    address: b:1\n",
    );
    assert_eq!(path, "remotes.b.address");
    assert!(message.contains("unknown field `address`"), "{message}");
}

#[test]
fn remote_tls_needs_cert_and_key_together() {
    let remote = |tls: &str| {
        format!("remotes:\n  b:\n    build_index: {{hosts: {{static: [b:1]}}}}\n    tls: {tls}\n")
    };
    let (path, message) = refused::<OriginConfig>(ORIGIN, &remote("{ca: /b.pem, cert: /c.pem}"));
    assert_eq!(path, "remotes.b.tls.key");
    assert!(message.contains("set together"), "{message}");
    let (path, _) = refused::<OriginConfig>(ORIGIN, &remote("{ca: /b.pem, key: /c.key}"));
    assert_eq!(path, "remotes.b.tls.cert");
    let (path, message) =
        refused::<OriginConfig>(ORIGIN, &remote("{ca: /b.pem, server_name: 'b:15004'}"));
    assert_eq!(path, "remotes.b.tls.server_name");
    assert!(message.contains("not a host name"), "{message}");

    let config = load::<OriginConfig>(
        ORIGIN,
        &remote("{ca: /b.pem, cert: /for-b.pem, key: /for-b.key}"),
    )
    .unwrap();
    let own = kraken_config::tls::TlsSection {
        ca: Some("/ca.pem".into()),
        cert: Some("/origin.pem".into()),
        key: Some("/origin.key".into()),
    };
    let b = &config.remotes["b"];
    assert_eq!(
        b.tls.identity(&own),
        Some((Path::new("/for-b.pem"), Path::new("/for-b.key")))
    );
    // Without its own pair, a remote is dialed with the component's certificate.
    let config = load::<OriginConfig>(ORIGIN, &remote("{ca: /b.pem}")).unwrap();
    assert_eq!(
        config.remotes["b"].tls.identity(&own),
        Some((Path::new("/origin.pem"), Path::new("/origin.key")))
    );
    assert_eq!(config.remotes["b"].bandwidth, RemoteEgress::default());
}

#[test]
fn an_origin_loads_remotes_with_an_egress_cap_and_trusted_remotes() {
    let config = load::<OriginConfig>(
        ORIGIN,
        "
remotes:
  b:
    build_index:
      hosts:
        dns: build-index.b.example.com:15004
    tls:
      ca: /etc/kraken/b-ca.pem
    bandwidth:
      enable: true
      egress_bits_per_sec: 800Mbit
trusted_remotes:
  a:
    ca: /etc/kraken/a-ca.pem
",
    )
    .unwrap();
    let b = &config.remotes["b"];
    assert!(b.bandwidth.enable);
    assert_eq!(b.bandwidth.egress_bits_per_sec, 800_000_000);
    assert_eq!(
        config.trusted_remote_cas(),
        [("a".to_owned(), "/etc/kraken/a-ca.pem".into())]
    );
    // A trusted remote of an origin has no tag rules: origins hold blobs, not tags.
    let (path, message) =
        refused::<OriginConfig>(ORIGIN, "trusted_remotes:\n  a: {ca: /a.pem, tags: [.*]}\n");
    assert_eq!(path, "trusted_remotes.a.tags");
    assert!(message.contains("unknown field `tags`"), "{message}");
    let (path, _) = refused::<OriginConfig>(
        ORIGIN,
        "remotes:\n  b:\n    build_index: {hosts: {static: [b:1]}}\n    tls: {ca: /b.pem}\n    bandwidth: {enable: true, egress_bits_per_sec: 0}\n",
    );
    assert_eq!(path, "remotes.b.bandwidth.egress_bits_per_sec");
}
