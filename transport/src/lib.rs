//! How Kraken components reach each other.
//!
//! - [`grpc`]: every gRPC server is built here, so every one of them has mutual TLS, gRPC health,
//!   server reflection (v1 and v1alpha), request timeouts, per-connection concurrency limits and
//!   load shedding, and shuts down gracefully; and every client channel presents our certificate.
//!
//! This crate must never offer a plaintext or unverified connection: there is no fallback from
//! TLS to plain text (Kraken silently retried over HTTP on any TLS error).

pub mod bandwidth;
pub mod grpc;
pub mod quic;
pub mod ring;
