//! Conversions between these types and their `kraken.common.v1` wire forms. Every conversion
//! from the wire validates: a peer or client controls those bytes.

use std::net::{IpAddr, SocketAddr};

use kraken_proto::common::v1 as pb;

use crate::{
    Digest, DigestError, MetaInfo, MetaInfoError, PeerId, PeerIdError, PieceHashAlgorithm,
};

/// Why a wire message does not convert.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("field `{field}` is missing")]
    Missing { field: &'static str },
    #[error("field `{field}`: {source}")]
    Digest {
        field: &'static str,
        #[source]
        source: DigestError,
    },
    #[error("field `{field}`: {source}")]
    PeerId {
        field: &'static str,
        #[source]
        source: PeerIdError,
    },
    #[error("metainfo is inconsistent: {0}")]
    MetaInfo(#[from] MetaInfoError),
    #[error("field `piece_hash_algorithm`: unknown value {0}")]
    PieceHashAlgorithm(i32),
    #[error("field `ip`: {ip:?} is not an IP address")]
    Ip { ip: String },
    #[error("field `port`: {port} is not a usable port (1-65535)")]
    Port { port: u32 },
}

/// Parses a digest field of a request, naming the field on error.
pub fn parse_digest(field: &'static str, text: &str) -> Result<Digest, WireError> {
    text.parse()
        .map_err(|source| WireError::Digest { field, source })
}

impl From<&MetaInfo> for pb::MetaInfo {
    fn from(info: &MetaInfo) -> Self {
        Self {
            digest: info.digest().to_string(),
            length: info.length(),
            piece_length: info.piece_length(),
            piece_hash_algorithm: pb::PieceHashAlgorithm::from(info.piece_hash_algorithm()) as i32,
            piece_hashes: info
                .piece_hashes()
                .iter()
                .map(|hash| bytes::Bytes::copy_from_slice(hash))
                .collect(),
        }
    }
}

impl TryFrom<&pb::MetaInfo> for MetaInfo {
    type Error = WireError;

    fn try_from(wire: &pb::MetaInfo) -> Result<Self, Self::Error> {
        let digest = parse_digest("digest", &wire.digest)?;
        let algorithm = match pb::PieceHashAlgorithm::try_from(wire.piece_hash_algorithm) {
            Ok(pb::PieceHashAlgorithm::Blake3) => PieceHashAlgorithm::Blake3,
            Ok(pb::PieceHashAlgorithm::Sha256) => PieceHashAlgorithm::Sha256,
            _ => return Err(WireError::PieceHashAlgorithm(wire.piece_hash_algorithm)),
        };
        let hashes: Vec<Vec<u8>> = wire.piece_hashes.iter().map(|h| h.to_vec()).collect();
        Ok(MetaInfo::from_wire(
            digest,
            wire.length,
            wire.piece_length,
            algorithm,
            &hashes,
        )?)
    }
}

impl From<PieceHashAlgorithm> for pb::PieceHashAlgorithm {
    fn from(algorithm: PieceHashAlgorithm) -> Self {
        match algorithm {
            PieceHashAlgorithm::Blake3 => Self::Blake3,
            PieceHashAlgorithm::Sha256 => Self::Sha256,
        }
    }
}

/// A swarm participant, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerInfo {
    pub peer_id: PeerId,
    /// Where other peers dial it (QUIC).
    pub addr: SocketAddr,
    pub complete: bool,
    pub origin: bool,
}

impl From<&PeerInfo> for pb::PeerInfo {
    fn from(peer: &PeerInfo) -> Self {
        Self {
            peer_id: bytes::Bytes::copy_from_slice(peer.peer_id.as_bytes()),
            ip: peer.addr.ip().to_string(),
            port: u32::from(peer.addr.port()),
            complete: peer.complete,
            origin: peer.origin,
        }
    }
}

impl TryFrom<&pb::PeerInfo> for PeerInfo {
    type Error = WireError;

    fn try_from(wire: &pb::PeerInfo) -> Result<Self, Self::Error> {
        let peer_id = PeerId::from_slice(&wire.peer_id).map_err(|source| WireError::PeerId {
            field: "peer_id",
            source,
        })?;
        let ip: IpAddr = wire.ip.parse().map_err(|_| WireError::Ip {
            ip: crate::clip(&wire.ip),
        })?;
        let port = u16::try_from(wire.port)
            .ok()
            .filter(|port| *port != 0)
            .ok_or(WireError::Port { port: wire.port })?;
        Ok(Self {
            peer_id,
            addr: SocketAddr::new(ip, port),
            complete: wire.complete,
            origin: wire.origin,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metainfo_round_trips_and_rejects_bad_wire_data() {
        let data = vec![7u8; 5000];
        let info = MetaInfo::generate(&data[..], 1024, PieceHashAlgorithm::Blake3).unwrap();
        let wire = pb::MetaInfo::from(&info);
        assert_eq!(MetaInfo::try_from(&wire).unwrap(), info);

        let mut bad = wire.clone();
        bad.digest = "sha256:nope".into();
        assert!(matches!(
            MetaInfo::try_from(&bad),
            Err(WireError::Digest {
                field: "digest",
                ..
            })
        ));
        let mut bad = wire.clone();
        bad.piece_hashes.pop();
        assert!(matches!(
            MetaInfo::try_from(&bad),
            Err(WireError::MetaInfo(_))
        ));
        let mut bad = wire;
        bad.piece_hash_algorithm = 0;
        assert!(matches!(
            MetaInfo::try_from(&bad),
            Err(WireError::PieceHashAlgorithm(0))
        ));
    }

    #[test]
    fn peer_info_round_trips_and_validates() {
        let peer = PeerInfo {
            peer_id: PeerId::random(),
            addr: "10.0.0.7:16001".parse().unwrap(),
            complete: true,
            origin: false,
        };
        let wire = pb::PeerInfo::from(&peer);
        assert_eq!(PeerInfo::try_from(&wire).unwrap(), peer);
        let mut bad = wire.clone();
        bad.port = 0;
        assert_eq!(PeerInfo::try_from(&bad), Err(WireError::Port { port: 0 }));
        let mut bad = wire.clone();
        bad.ip = "host.example".into();
        assert!(matches!(
            PeerInfo::try_from(&bad),
            Err(WireError::Ip { .. })
        ));
        let mut bad = wire;
        bad.peer_id = bytes::Bytes::from_static(b"short");
        assert!(matches!(
            PeerInfo::try_from(&bad),
            Err(WireError::PeerId { .. })
        ));
    }
}
