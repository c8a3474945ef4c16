//! The vocabulary and HTTP surface of the Docker Registry v2 / OCI distribution API, shared by
//! every component that speaks it (the agent's read-only registry, the proxy's push registry,
//! build-index's dependency check): media types, manifest parsing and validation with the
//! digests a manifest refers to, repository and tag names, the registry's error JSON
//! (`{"errors":[{"code","message","detail"}]}`) as an axum response, and the HTTP surface
//! itself: the `/v2/…` route grammar ([`Route`]), `Range` and `Content-Range`
//! ([`ByteRange`], [`ByteSpan`]), and the [`response`] builders with `Link` pagination. The
//! components keep only their handlers: what a route does, not how it is spelled.
//!
//! This crate is pure data and validation. It must never do I/O, never depend on a component
//! crate (proxy, agent, origin, build-index), never panic on a body, header
//! or path segment a client sent (every parser returns a typed error naming what was wrong),
//! and never accept a manifest it could not fully check: a manifest that passes
//! [`Manifest::parse`] has schema version 2, a known media type consistent with its
//! `Content-Type`, and descriptors with valid sha256 digests and sizes.

mod error;
pub mod headers;
mod manifest;
pub mod media_type;
mod name;
pub mod range;
pub mod response;
pub mod route;

pub use error::{ErrorBody, ErrorCode, ErrorInfo, RegistryError, UnknownErrorCode};
pub use manifest::{
    Descriptor, ImageIndex, ImageManifest, MAX_MANIFEST_SIZE, Manifest, ManifestError,
    ManifestKind, Platform,
};
pub use name::{
    NameError, Reference, ReferenceError, Tag, TagError, TaggedName, TaggedNameError,
    parse_repository,
};
pub use range::{ByteRange, ByteSpan, RangeError};
pub use route::Route;
