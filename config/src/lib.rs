//! Typed configuration for every Kraken component.

pub mod store;
