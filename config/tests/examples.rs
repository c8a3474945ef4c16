//! Every example config under `config/examples/` loads and validates, and its printed effective
//! config loads back to the same value.

// Helpers outside #[test] functions panic on failure too: that is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use kraken_config::{AnyConfig, Component, Loader};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// No variables set: the examples must work on their `${VAR:-default}` defaults alone.
fn empty_env() -> HashMap<String, String> {
    HashMap::new()
}

#[test]
fn every_component_has_a_base_and_a_development_example() {
    for component in Component::ALL {
        let dir = examples_dir().join(component.name());
        for file in ["base.yaml", "development.yaml"] {
            assert!(
                dir.join(file).is_file(),
                "missing {}",
                dir.join(file).display()
            );
        }
    }
}

#[test]
fn every_example_loads_and_validates() {
    let env = empty_env();
    let loader = Loader::with_env(&env);
    let mut loaded_count = 0;
    for entry in std::fs::read_dir(examples_dir()).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        let development = dir.join("development.yaml");
        let component = Component::guess_from_path(&development)
            .unwrap_or_else(|| panic!("no component recognised for {}", development.display()));
        let loaded = component
            .load_with(&loader, &development)
            .unwrap_or_else(|e| panic!("{} does not load: {e}", development.display()));
        assert_eq!(loaded.config.component(), component);
        assert_eq!(loaded.files, [development.clone(), dir.join("base.yaml")]);

        // The development file uses `${VAR:-default}`; with nothing set the default applies.
        let text = std::fs::read_to_string(&development).unwrap();
        assert!(
            text.contains("${"),
            "{} should show env substitution",
            development.display()
        );
        assert!(
            !loaded.config.to_yaml().unwrap().contains("${"),
            "unsubstituted variable"
        );
        loaded_count += 1;
    }
    assert_eq!(loaded_count, Component::ALL.len());
}

#[test]
fn base_files_deserialize_on_their_own() {
    // A base file is incomplete by design (no hosts), so only the schema is checked.
    let env = empty_env();
    let loader = Loader::with_env(&env);
    for component in Component::ALL {
        let base = examples_dir().join(component.name()).join("base.yaml");
        let result = match component {
            Component::Agent => loader
                .load_unvalidated::<kraken_config::AgentConfig>(&base)
                .map(drop),
            Component::Origin => loader
                .load_unvalidated::<kraken_config::OriginConfig>(&base)
                .map(drop),
            Component::Tracker => loader
                .load_unvalidated::<kraken_config::TrackerConfig>(&base)
                .map(drop),
            Component::Proxy => loader
                .load_unvalidated::<kraken_config::ProxyConfig>(&base)
                .map(drop),
            Component::BuildIndex => loader
                .load_unvalidated::<kraken_config::BuildIndexConfig>(&base)
                .map(drop),
        };
        result.unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn examples_take_values_from_the_environment() {
    let env = HashMap::from([
        ("KRAKEN_DIR".to_owned(), "/srv/kraken".to_owned()),
        ("ORIGIN_NAME".to_owned(), "127.0.0.1:15012".to_owned()),
    ]);
    let loader = Loader::with_env(&env);
    let path = examples_dir().join("origin/development.yaml");
    let AnyConfig::Origin(origin) = Component::Origin.load_with(&loader, &path).unwrap().config
    else {
        panic!("not an origin config");
    };
    assert_eq!(origin.name, "127.0.0.1:15012");
    assert_eq!(origin.store.dir, Path::new("/srv/kraken/origin/store"));
    // From base.yaml, untouched by development.yaml.
    assert_eq!(origin.writeback.workers, 4);
    // Overridden by development.yaml.
    assert_eq!(origin.hashring.max_replica, 2);
    assert_eq!(origin.store.capacity, bytesize::ByteSize::gib(10));
    assert!(!origin.scheduler.conn.bandwidth.enable);
    // Base's value kept where development.yaml only touched a sibling.
    assert_eq!(
        origin.scheduler.conn.bandwidth.egress_bits_per_sec,
        1_677_721_600
    );
    let policy = origin.metainfogen.piece_length_policy().unwrap();
    assert_eq!(policy.piece_length_for(300 << 20), 512 << 10);
    assert_eq!(origin.backends.len(), 2);
    assert!(origin.backends[0].namespace.is_match("library/ubuntu"));
    assert!(!origin.backends[0].namespace.is_match("team/app"));
    let chosen = kraken_config::backend::backend_for(&origin.backends, "team/app").unwrap();
    assert_eq!(chosen.namespace.as_str(), ".*");
}

#[test]
fn printed_effective_configs_load_back_unchanged() {
    let env = empty_env();
    let loader = Loader::with_env(&env);
    for component in Component::ALL {
        let path = examples_dir()
            .join(component.name())
            .join("development.yaml");
        let original = component.load_with(&loader, &path).unwrap().config;
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in [
            ("effective.yaml", original.to_yaml().unwrap()),
            // YAML is a superset of JSON: the JSON form loads through the same pipeline.
            ("effective.json", original.to_json_pretty().unwrap()),
        ] {
            let printed = dir.path().join(name);
            std::fs::write(&printed, &text).unwrap();
            let reloaded = component
                .load_with(&loader, &printed)
                .unwrap_or_else(|e| panic!("{component} {name} does not reload: {e}\n{text}"));
            assert_eq!(reloaded.config, original, "{component} {name}:\n{text}");
        }
    }
}

#[test]
fn documented_limits_are_the_defaults() {
    // base.yaml lists every `limits:` key with its default, as the reference for operators:
    // this keeps the two in step.
    let env = empty_env();
    let loader = Loader::with_env(&env);
    for component in Component::ALL {
        let path = examples_dir().join(component.name()).join("base.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("\nlimits:\n"),
            "{component}: no limits section"
        );
        match component {
            Component::Agent => {
                let config = loader
                    .load_unvalidated::<kraken_config::AgentConfig>(&path)
                    .unwrap()
                    .config;
                assert_eq!(config.limits, Default::default(), "{component}");
            }
            Component::Origin => {
                let config = loader
                    .load_unvalidated::<kraken_config::OriginConfig>(&path)
                    .unwrap()
                    .config;
                assert_eq!(config.limits, Default::default(), "{component}");
            }
            Component::Tracker => {
                let config = loader
                    .load_unvalidated::<kraken_config::TrackerConfig>(&path)
                    .unwrap()
                    .config;
                assert_eq!(config.limits, Default::default(), "{component}");
            }
            Component::Proxy => {
                let config = loader
                    .load_unvalidated::<kraken_config::ProxyConfig>(&path)
                    .unwrap()
                    .config;
                assert_eq!(config.limits, Default::default(), "{component}");
            }
            Component::BuildIndex => {
                let config = loader
                    .load_unvalidated::<kraken_config::BuildIndexConfig>(&path)
                    .unwrap()
                    .config;
                assert_eq!(config.limits, Default::default(), "{component}");
            }
        }
    }
}

/// The commented-out block of `base.yaml` that starts at the line `# {key}:`, uncommented.
fn commented_block(text: &str, key: &str) -> String {
    let start = format!("# {key}:");
    let mut lines = text.lines().skip_while(|line| *line != start);
    let mut block = String::new();
    if let Some(first) = lines.next() {
        block.push_str(&first[2..]);
        block.push('\n');
    }
    for line in lines.take_while(|line| line.starts_with("#   ")) {
        block.push_str(&line[2..]);
        block.push('\n');
    }
    assert!(block.lines().count() > 1, "no `{start}` example");
    block
}

#[test]
fn documented_remotes_load_and_show_the_defaults() {
    // base.yaml documents `remotes:` and `trusted_remotes:` as commented examples (they have
    // no default entries): uncommented, each loads, and what it shows as a default is one.
    let env = empty_env();
    let loader = Loader::with_env(&env);
    let dir = tempfile::tempdir().unwrap();

    let text = std::fs::read_to_string(examples_dir().join("build-index/base.yaml")).unwrap();
    let yaml = format!(
        "tag_store: {{write_through: false}}\norigin: {{hosts: {{static: [o:1]}}}}\n{}{}",
        commented_block(&text, "remotes"),
        commented_block(&text, "trusted_remotes")
    );
    let path = dir.path().join("build-index.yaml");
    std::fs::write(&path, yaml).unwrap();
    let config = loader
        .load::<kraken_config::BuildIndexConfig>(&path)
        .unwrap()
        .config;
    assert_eq!(config.remotes.len(), 1);
    let (_, trusted) = config.trusted_remotes.iter().next().unwrap();
    assert_eq!(
        trusted.tags,
        kraken_config::remote::TrustedBuildIndexRemote::default().tags
    );

    let text = std::fs::read_to_string(examples_dir().join("origin/base.yaml")).unwrap();
    let yaml = format!(
        "name: o:1\ncluster: {{hosts: {{static: [o:1]}}}}\n{}{}",
        commented_block(&text, "remotes"),
        commented_block(&text, "trusted_remotes")
    );
    let path = dir.path().join("origin.yaml");
    std::fs::write(&path, yaml).unwrap();
    let config = loader
        .load::<kraken_config::OriginConfig>(&path)
        .unwrap()
        .config;
    assert_eq!(config.trusted_remotes.len(), 1);
    let (_, remote) = config.remotes.iter().next().unwrap();
    assert_eq!(remote.bandwidth, Default::default());
}
