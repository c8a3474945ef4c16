//! The rule of the house, kept by a test: crates form layers, and a crate depends only on
//! crates of its own layer or below. Components (origin, tracker, agent, proxy, build-index)
//! never depend on one another at all: they talk over gRPC at run time, never by linking.
//!
//! ```text
//! assembly     kraken (binary), devcluster, tests, interop, bench
//! components   origin · tracker · agent · proxy · build-index   (never on each other)
//! clients      originclient · tagclient
//! engine       store · scheduler · backend · telemetry · oci
//! foundation   core · proto · config · tls · transport
//! ```
//!
//! Only normal and build dependencies count: a component's integration tests may assemble a
//! cluster (a test is assembly), so dev-dependencies are free.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::process::Command;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Layer {
    Foundation,
    Engine,
    Clients,
    Components,
    Assembly,
}

/// Every workspace crate and its layer. A new crate must be placed here, or this test fails.
const LAYERS: &[(&str, Layer)] = &[
    ("kraken-core", Layer::Foundation),
    ("kraken-proto", Layer::Foundation),
    ("kraken-config", Layer::Foundation),
    ("kraken-tls", Layer::Foundation),
    ("kraken-transport", Layer::Foundation),
    ("kraken-store", Layer::Engine),
    ("kraken-scheduler", Layer::Engine),
    ("kraken-backend", Layer::Engine),
    ("kraken-telemetry", Layer::Engine),
    ("kraken-oci", Layer::Engine),
    ("kraken-originclient", Layer::Clients),
    ("kraken-tagclient", Layer::Clients),
    ("kraken-origin", Layer::Components),
    ("kraken-tracker", Layer::Components),
    ("kraken-agent", Layer::Components),
    ("kraken-proxy", Layer::Components),
    ("kraken-buildindex", Layer::Components),
    ("kraken", Layer::Assembly),
    ("kraken-devcluster", Layer::Assembly),
    ("kraken-tests", Layer::Assembly),
    ("kraken-interop", Layer::Assembly),
    ("kraken-bench", Layer::Assembly),
];

/// Workspace crates with their normal and build dependencies on other workspace crates, read
/// from `cargo metadata`.
fn workspace_dependencies() -> BTreeMap<String, Vec<String>> {
    let output = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let packages = metadata["packages"].as_array().unwrap();
    let members: Vec<String> = packages
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect();
    packages
        .iter()
        .map(|package| {
            let name = package["name"].as_str().unwrap().to_owned();
            let dependencies = package["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                // `kind` is null for normal dependencies, "build" or "dev" otherwise.
                .filter(|d| d["kind"].as_str() != Some("dev"))
                .map(|d| d["name"].as_str().unwrap().to_owned())
                .filter(|d| members.contains(d))
                .collect();
            (name, dependencies)
        })
        .collect()
}

fn layer_of(name: &str) -> Option<Layer> {
    LAYERS.iter().find(|(n, _)| *n == name).map(|(_, l)| *l)
}

/// Why `from → to` breaks the layering, if it does.
fn violation(from: &str, to: &str) -> Option<String> {
    let (Some(from_layer), Some(to_layer)) = (layer_of(from), layer_of(to)) else {
        return Some(format!("{from} → {to}: a crate is not placed in a layer"));
    };
    if to_layer > from_layer {
        return Some(format!(
            "{from} ({from_layer:?}) → {to} ({to_layer:?}): an arrow points up"
        ));
    }
    if from_layer == Layer::Components && to_layer == Layer::Components {
        return Some(format!(
            "{from} → {to}: components never link each other; call it over gRPC through a \
             client crate"
        ));
    }
    None
}

#[test]
fn every_workspace_crate_has_a_layer() {
    let unplaced: Vec<String> = workspace_dependencies()
        .into_keys()
        .filter(|name| layer_of(name).is_none())
        .collect();
    assert!(
        unplaced.is_empty(),
        "place these crates in LAYERS (tests/tests/layering.rs): {unplaced:?}"
    );
}

#[test]
fn dependencies_only_point_down_and_components_never_link_each_other() {
    let violations: Vec<String> = workspace_dependencies()
        .iter()
        .flat_map(|(from, deps)| deps.iter().filter_map(|to| violation(from, to)))
        .collect();
    assert!(
        violations.is_empty(),
        "layering violations:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_rule_itself_catches_what_it_must() {
    assert!(violation("kraken-proxy", "kraken-buildindex").is_some());
    assert!(violation("kraken-backend", "kraken-origin").is_some());
    assert!(violation("kraken-core", "kraken-store").is_some());
    assert!(violation("kraken-proxy", "kraken-originclient").is_none());
    assert!(violation("kraken-scheduler", "kraken-store").is_none());
    assert!(violation("kraken-devcluster", "kraken-origin").is_none());
    assert!(violation("kraken-new", "kraken-core").is_some());
}
