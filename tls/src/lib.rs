//! Mutual TLS for every Kraken component: loading PEM material, generating a dev PKI, and
//! building rustls configs for tonic (gRPC over TCP) and quinn (the QUIC peer protocol) that
//! *require and verify* a certificate from the cluster CA on both ends. It also reads the
//! role a verified peer holds (`agent`, `origin`, `tracker`, `proxy`, `build-index` or
//! `client`), which servers use to decide what a caller may do.
//!
//! This crate must never offer a mode that skips verification, accepts a peer without a
//! certificate, or trusts a role read from a certificate that rustls has not verified. The
//! one relaxation, [`ServerCheck::RoleOnly`], still verifies the chain, expiry and handshake
//! signature and only lets an allowed role stand in for the host name. Every config is built
//! with the *ring* provider explicitly, so behaviour never depends on which provider some
//! other crate installed.
//!
//! # Other clusters
//!
//! A server may also trust the CAs of named remote clusters ([`TrustDomains`]); which CA
//! vouched for a caller ([`Trust`]) is decided by re-verifying its chain against each CA's
//! key, never by issuer name, so that a remote CA can never pass its certificates off as
//! ours. Material for dialing a remote cluster ([`TlsMaterial::load_for_remote`]) trusts
//! that cluster's CA and therefore refuses to build any server config.
//!
//! # The role in a certificate
//!
//! A certificate's role is a URI subject alternative name `kraken://role/<role>`, e.g.
//! `kraken://role/build-index` (see [`ROLE_URI_PREFIX`]). Exactly one such URI must be
//! present; other URIs are ignored. Any CA can issue such certificates (openssl, cfssl,
//! cert-manager), and [`generate_dev_pki`] writes a complete set for local clusters.

mod configs;
mod error;
mod failure;
mod material;
mod peer;
mod pki;
mod provider;
mod role;
mod trust;

pub use configs::{ALPN_P2P, ServerCheck};
pub use error::{PemFile, TlsError};
pub use failure::{HandshakeFailure, handshake_failure};
pub use material::{TlsConfig, TlsMaterial};
pub use peer::{
    identity_from_verified_chain, peer_identity_from_quinn, peer_identity_from_request,
    peer_identity_from_rustls, peer_role_from_quinn, peer_role_from_request, require_role,
};
pub use pki::{
    DEFAULT_LEAF_VALIDITY, DevCa, DevPki, DevPkiOptions, IssuedCert, LeafOptions, generate_dev_pki,
};
pub use provider::{crypto_provider, install_crypto_provider};
pub use role::{
    ParseRoleError, PeerIdentity, ROLE_URI_PREFIX, Role, Validity, role_of, validity_of,
};
pub use trust::{Caller, Trust, TrustDomains, caller_from_verified_chain};
