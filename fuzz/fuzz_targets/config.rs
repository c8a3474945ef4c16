//! Config files as an operator (or a template gone wrong) writes them: any text through the
//! whole loader (YAML, `${VAR}` substitution, typed keys, validation) for every component.
//! Never a panic: every problem is an error naming where it is.
#![no_main]

use kraken_config::{AgentConfig, BuildIndexConfig, OriginConfig, ProxyConfig, TrackerConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // `extends` resolves against this file's directory: a name that cannot exist keeps the
    // fuzzer off the real filesystem's configs.
    let name = "/nonexistent-fuzz-dir/config.yaml";
    let _ = kraken_config::load_from_str::<AgentConfig>(name, text);
    let _ = kraken_config::load_from_str::<OriginConfig>(name, text);
    let _ = kraken_config::load_from_str::<TrackerConfig>(name, text);
    let _ = kraken_config::load_from_str::<ProxyConfig>(name, text);
    let _ = kraken_config::load_from_str::<BuildIndexConfig>(name, text);
});
