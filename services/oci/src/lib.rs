//! The vocabulary of the Docker Registry v2 / OCI distribution API, shared by every component
//! that speaks it (the agent's read-only registry, the proxy's push registry, build-index's
//! dependency check): media types, manifest parsing and validation with the digests a manifest
//! refers to, repository and tag names, and the registry's error JSON
//! (`{"errors":[{"code","message","detail"}]}`) as an axum response.
//!
//! This crate is pure data and validation. It must never do I/O, never panic on a body, header
//! or path segment a client sent (every parser returns a typed error naming what was wrong),
//! and never accept a manifest it could not fully check: a manifest that passes
//! [`Manifest::parse`] has schema version 2, a known media type consistent with its
//! `Content-Type`, and descriptors with valid sha256 digests and sizes.

mod error;
pub mod headers;
mod manifest;
pub mod media_type;
mod name;

pub use error::{ErrorBody, ErrorCode, ErrorInfo, RegistryError, UnknownErrorCode};
pub use manifest::{
    Descriptor, ImageIndex, ImageManifest, MAX_MANIFEST_SIZE, Manifest, ManifestError,
    ManifestKind, Platform,
};
pub use name::{
    NameError, Reference, ReferenceError, Tag, TagError, TaggedName, TaggedNameError,
    parse_repository,
};
