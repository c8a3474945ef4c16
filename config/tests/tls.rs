//! The `tls:` section is all or none, for every component, through the same loading path
//! `kraken config check` and a starting component take (`Component::load_with`): a complete
//! section gives three paths, an absent or empty one none, and a partial one is a validation
//! error naming the file, the position and the missing key.

// Helpers outside #[test] functions panic on failure too: that is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use kraken_config::tls::TlsSection;
use kraken_config::{AnyConfig, Component, ConfigError, KeyPath, Loaded, Loader};

/// Loads the component's development example with its `tls:` section replaced by `tls`
/// (appended at the end). Returns the file written and the line `tls` starts on.
fn load(
    dir: &Path,
    component: Component,
    tls: &str,
) -> (PathBuf, usize, Result<Loaded<AnyConfig>, ConfigError>) {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(component.name());
    let dir = dir.join(component.name());
    std::fs::create_dir_all(&dir).unwrap();
    // `development.yaml` extends `base.yaml`, which has no `tls:`.
    std::fs::copy(examples.join("base.yaml"), dir.join("base.yaml")).unwrap();
    let development = std::fs::read_to_string(examples.join("development.yaml")).unwrap();
    let mut in_tls = false;
    let mut text = String::new();
    for line in development.lines() {
        if !line.starts_with([' ', '#']) && !line.is_empty() {
            in_tls = line.starts_with("tls:");
        }
        if !in_tls {
            text.push_str(line);
            text.push('\n');
        }
    }
    assert!(!text.contains("\ntls:"), "{text}");
    let tls_line = text.lines().count() + 1;
    text.push_str(tls);
    let file = dir.join("development.yaml");
    std::fs::write(&file, text).unwrap();
    let env = HashMap::new();
    let loaded = component.load_with(&Loader::with_env(&env), &file);
    (file, tls_line, loaded)
}

fn tls_of(config: &AnyConfig) -> &TlsSection {
    match config {
        AnyConfig::Agent(c) => &c.tls,
        AnyConfig::Origin(c) => &c.tls,
        AnyConfig::Tracker(c) => &c.tls,
        AnyConfig::Proxy(c) => &c.tls,
        AnyConfig::BuildIndex(c) => &c.tls,
    }
}

#[test]
fn a_complete_section_gives_all_three_paths() {
    let dir = tempfile::tempdir().unwrap();
    for component in Component::ALL {
        let (_, _, loaded) = load(
            dir.path(),
            component,
            "tls:\n  ca: /pki/ca.pem\n  cert: /pki/c.pem\n  key: /pki/c.key\n",
        );
        let loaded = loaded.unwrap_or_else(|e| panic!("{component}: {e}"));
        let files = tls_of(&loaded.config).files().unwrap();
        assert_eq!(
            files,
            Some([
                Path::new("/pki/ca.pem"),
                Path::new("/pki/c.pem"),
                Path::new("/pki/c.key")
            ]),
            "{component}"
        );
    }
}

#[test]
fn an_absent_or_empty_section_gives_none() {
    let dir = tempfile::tempdir().unwrap();
    for component in Component::ALL {
        for tls in ["", "tls:\n", "tls: {}\n", "tls:\n  # ca: /pki/ca.pem\n"] {
            let (_, _, loaded) = load(dir.path(), component, tls);
            let loaded = loaded.unwrap_or_else(|e| panic!("{component} {tls:?}: {e}"));
            let section = tls_of(&loaded.config);
            assert!(!section.is_configured(), "{component} {tls:?}");
            assert_eq!(section.files().unwrap(), None, "{component} {tls:?}");
        }
    }
}

#[test]
fn a_partial_section_is_an_error_naming_file_position_and_missing_key() {
    let dir = tempfile::tempdir().unwrap();
    // (section, first missing key, other missing key)
    let cases = [
        ("tls:\n  cert: /c.pem\n  key: /c.key\n", "ca", None),
        ("tls:\n  ca: /ca.pem\n  key: /c.key\n", "cert", None),
        ("tls:\n  ca: /ca.pem\n  cert: /c.pem\n", "key", None),
        ("tls:\n  ca: /ca.pem\n", "cert", Some("key")),
        ("tls:\n  cert: /c.pem\n", "ca", Some("key")),
        ("tls:\n  key: /c.key\n", "ca", Some("cert")),
    ];
    for component in Component::ALL {
        for (tls, missing, also) in cases {
            let (file, tls_line, loaded) = load(dir.path(), component, tls);
            let Err(error) = loaded else {
                panic!("{component} {tls:?} must not load");
            };
            assert!(
                matches!(error, ConfigError::Validation { .. }),
                "{component} {tls:?}: {error:?}"
            );
            assert_eq!(error.file(), file, "{component} {tls:?}");
            assert_eq!(
                error.key_path(),
                Some(&KeyPath::parse(&format!("tls.{missing}"))),
                "{component} {tls:?}"
            );
            // At the section (or its first key): the missing key has no line of its own.
            let line = error.location().map(|l| l.line);
            assert!(
                line == Some(tls_line) || line == Some(tls_line + 1),
                "{component} {tls:?}: {line:?}, section at {tls_line}"
            );
            let message = error.to_string();
            assert!(
                message.contains(&format!("tls.{missing}: missing")),
                "{message}"
            );
            if let Some(also) = also {
                assert!(message.contains(&format!("`{also}`")), "{message}");
            }
        }
    }
}

#[test]
fn an_empty_path_is_not_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _, loaded) = load(
        dir.path(),
        Component::Tracker,
        "tls:\n  ca: /ca.pem\n  cert: \"\"\n  key: /c.key\n",
    );
    let message = loaded.unwrap_err().to_string();
    assert!(
        message.contains("tls.cert: must be a file path"),
        "{message}"
    );
}

/// The check behind validation is also what the binary asks, so both read a section alike.
#[test]
fn files_and_validation_agree() {
    use kraken_config::Validate;

    let path = || Some(PathBuf::from("/p.pem"));
    for mask in 0..8u8 {
        let section = TlsSection {
            ca: (mask & 1 != 0).then(path).flatten(),
            cert: (mask & 2 != 0).then(path).flatten(),
            key: (mask & 4 != 0).then(path).flatten(),
        };
        let files = section.files();
        assert_eq!(files.is_ok(), section.validate().is_ok(), "{section:?}");
        match mask {
            0 => assert_eq!(files.unwrap(), None),
            7 => assert!(files.unwrap().is_some()),
            _ => assert!(files.is_err(), "{section:?}"),
        }
    }
}
