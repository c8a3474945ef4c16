//! One module per subcommand.

pub(crate) mod agent;
pub(crate) mod blob;
pub(crate) mod build_index;
pub(crate) mod certs;
pub(crate) mod config;
pub(crate) mod devcluster;
pub(crate) mod doctor;
pub(crate) mod health;
pub(crate) mod mirror_config;
pub(crate) mod origin;
pub(crate) mod preflight;
pub(crate) mod proxy;
pub(crate) mod replication;
pub(crate) mod serve;
pub(crate) mod tracker;
