//! How Kraken components reach each other.
//!
//! - [`grpc`]: every gRPC server is built here, so every one of them has mutual TLS, gRPC health,
//!   server reflection (v1 and v1alpha), request timeouts, per-connection concurrency limits and
//!   load shedding, and shuts down gracefully; and every client channel presents our certificate.
//! - [`observe`]: one tower layer on every server and client channel: trace context carried
//!   in gRPC metadata (one pull is one trace across processes) and per-RPC metrics.
//! - [`cluster`]: who is in a cluster (static list or DNS, re-resolved), who owns a digest
//!   ([`ring`], rendezvous hashing) and who is healthy ([`health`]: passive checks from a
//!   client's own requests, active gRPC health probes among origins). Origins, trackers, agents
//!   and the proxy all route through a [`cluster::HostPool`].
//! - [`advertise`]: which address a swarm member gives peers (never loopback to another host).
//! - [`lifecycle`]: how every component stops its servers (grace period, then cut).
//! - [`remote`]: the TLS material to dial another cluster with (its CA, our certificate).
//!
//! This crate must never offer a plaintext or unverified connection: there is no fallback from
//! TLS to plain text (Kraken silently retried over HTTP on any TLS error).

pub mod access;
pub mod advertise;
pub mod bandwidth;
mod capped;
pub mod cluster;
pub mod grpc;
pub mod health;
pub mod http;
pub mod lifecycle;
pub mod observe;
pub mod quic;
pub mod remote;
pub mod ring;
