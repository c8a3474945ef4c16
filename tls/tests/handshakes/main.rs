//! Real handshakes between real endpoints on `127.0.0.1:0`: TLS over TCP (tokio-rustls),
//! QUIC (quinn) and gRPC (tonic), plus the dev PKI on disk and loading errors.

// Helpers outside `#[test]` functions are not covered by clippy.toml's test allowance; a
// panic here is a failed assertion, never a crash a peer can trigger.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod dev_pki;
mod grpc;
mod loading;
mod quic;
mod remote;
mod tcp;
