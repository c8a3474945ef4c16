//! Links: one peer's control stream for one blob, plus the connection-level readers that route
//! incoming control streams and piece streams to their blob's torrent.

use std::sync::Arc;

use bytes::Bytes;
use kraken_core::{Bitfield, Digest, Namespace, PeerId, PeerInfo};
use kraken_proto::p2p::v1::{self as pb, error::Code, message::Kind};
use kraken_store::{BlobStore, DownloadHandle};
use kraken_transport::quic::{self, ControlReceiver, ControlSender, TransportError};
use quinn::Connection;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::Inner;
use super::torrent::Event;
use crate::core::LinkId;

/// Where a piece we serve is read from.
pub(super) enum PieceSource {
    Downloading(DownloadHandle),
    Committed(BlobStore, Digest),
}

/// What we learned from a peer's handshake, validated.
#[derive(Debug, Clone)]
pub(super) struct PeerHandshake {
    pub(super) peer_id: PeerId,
    pub(super) bitfield: Bitfield,
    pub(super) neighbors: Vec<PeerId>,
    pub(super) origin: bool,
}

/// A control stream waiting to become a link.
pub(super) struct PendingLink {
    pub(super) connection: Connection,
    pub(super) sender: ControlSender,
    pub(super) receiver: ControlReceiver,
    pub(super) peer: PeerHandshake,
}

impl std::fmt::Debug for PendingLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingLink")
            .field("peer", &self.peer.peer_id)
            .finish_non_exhaustive()
    }
}

pub(super) fn handshake(
    local: &PeerInfo,
    namespace: &Namespace,
    digest: &Digest,
    bitfield: &Bitfield,
    neighbors: &[PeerId],
) -> pb::Message {
    pb::Message {
        kind: Some(Kind::Handshake(pb::Handshake {
            peer_id: Bytes::copy_from_slice(local.peer_id.as_bytes()),
            namespace: namespace.to_string(),
            digest: digest.to_string(),
            bitfield: Bytes::from(bitfield.to_bytes()),
            num_pieces: bitfield.len(),
            neighbor_peer_ids: neighbors
                .iter()
                .map(|p| Bytes::copy_from_slice(p.as_bytes()))
                .collect(),
            origin: local.origin,
        })),
    }
}

pub(super) fn error(code: Code, piece: u32, message: impl Into<String>) -> pb::Message {
    pb::Message {
        kind: Some(Kind::Error(pb::Error {
            code: code as i32,
            piece,
            message: message.into(),
        })),
    }
}

/// Validates the fields of a peer's handshake that do not depend on the blob's size.
fn parse_peer(
    handshake: &pb::Handshake,
    connection: &Connection,
) -> Result<(PeerId, Vec<PeerId>), String> {
    let peer_id = PeerId::from_slice(&handshake.peer_id).map_err(|e| e.to_string())?;
    let neighbors = handshake
        .neighbor_peer_ids
        .iter()
        .take(1024)
        .filter_map(|id| PeerId::from_slice(id).ok())
        .collect();
    // A peer may only claim to be an origin if its certificate says so.
    if handshake.origin {
        let role = kraken_tls::peer_role_from_quinn(connection).map_err(|e| e.to_string())?;
        if role != kraken_tls::Role::Origin {
            return Err(format!(
                "claims to be an origin but its certificate role is {role}"
            ));
        }
    }
    Ok((peer_id, neighbors))
}

pub(super) fn parse_handshake(
    handshake: &pb::Handshake,
    connection: &Connection,
    num_pieces: u32,
) -> Result<PeerHandshake, String> {
    let (peer_id, neighbors) = parse_peer(handshake, connection)?;
    if handshake.num_pieces != num_pieces {
        return Err(format!(
            "handshake says {} pieces, the metainfo {num_pieces}",
            handshake.num_pieces
        ));
    }
    let bitfield =
        Bitfield::from_bytes(num_pieces, &handshake.bitfield).map_err(|e| e.to_string())?;
    Ok(PeerHandshake {
        peer_id,
        bitfield,
        neighbors,
        origin: handshake.origin,
    })
}

/// Accepts the control streams peers open on `connection` and hands each to its blob's torrent
/// (opening a seeding torrent if we hold the blob).
pub(super) async fn accept_controls(inner: Arc<Inner>, connection: Connection) {
    loop {
        let Ok((send, recv)) = connection.accept_bi().await else {
            return;
        };
        let task_inner = inner.clone();
        let connection = connection.clone();
        inner.spawn_until_shutdown(async move {
            let inner = task_inner;
            let (mut sender, mut receiver) = quic::control_stream(send, recv);
            let first = tokio::time::timeout(inner.config.handshake_timeout, receiver.recv()).await;
            let Ok(Ok(Some(pb::Message {
                kind: Some(Kind::Handshake(handshake)),
            }))) = first
            else {
                tracing::debug!(remote = %connection.remote_address(), "no handshake on control stream");
                return;
            };
            let refuse = async |sender: &mut ControlSender, code: Code, why: String| {
                let _ = sender.send(&error(code, 0, why)).await;
            };
            let (namespace, digest) = match (
                handshake.namespace.parse::<Namespace>(),
                handshake.digest.parse::<Digest>(),
            ) {
                (Ok(namespace), Ok(digest)) => (namespace, digest),
                (Err(e), _) => return refuse(&mut sender, Code::InvalidBlob, e.to_string()).await,
                (_, Err(e)) => return refuse(&mut sender, Code::InvalidBlob, e.to_string()).await,
            };
            let Some(torrent) = inner.torrent_for_incoming(&namespace, &digest).await else {
                let why = format!("{digest} is not available here");
                refuse(&mut sender, Code::BlobUnknown, why).await;
                sender.finish().await;
                return;
            };
            let event = Event::Incoming {
                handshake,
                connection,
                sender,
                receiver,
            };
            let _ = torrent.events.send(event).await;
        });
    }
}

/// Reads the piece streams peers send on `connection` and hands each piece to its torrent.
pub(super) async fn accept_pieces(inner: Arc<Inner>, connection: Connection) {
    let connection_id = connection.stable_id();
    loop {
        let Ok(mut stream) = connection.accept_uni().await else {
            return;
        };
        let task_inner = inner.clone();
        inner.spawn_until_shutdown(async move {
            let inner = task_inner;
            let header = match quic::read_piece_header(&mut stream).await {
                Ok(header) => header,
                Err(error) => {
                    tracing::debug!(%error, "bad piece stream");
                    return;
                }
            };
            let Ok(digest_bytes) = <[u8; 32]>::try_from(header.digest.as_ref()) else {
                let _ = stream.stop(1u32.into());
                return;
            };
            let digest = Digest::from_sha256_bytes(digest_bytes);
            let Some(torrent) = inner.torrent(&digest) else {
                let _ = stream.stop(1u32.into());
                return;
            };
            // Only a piece we asked this peer for is read, and only as long as we know it to
            // be: the length the peer announces buys it nothing.
            let (expected, answer) = oneshot::channel();
            let started = Event::PieceStarted {
                connection_id,
                piece: header.piece,
                expected,
            };
            let _ = torrent.events.send(started).await;
            let Ok(Some(expected)) = answer.await else {
                tracing::debug!(%digest, piece = header.piece, "unrequested piece refused");
                metrics::counter!("kraken_p2p_refused_pieces_total").increment(1);
                let _ = stream.stop(quic::PIECE_REFUSED.into());
                return;
            };
            match quic::read_piece_payload(&mut stream, &header, expected, &inner.limiter).await {
                Ok(data) => {
                    metrics::counter!(crate::metrics::RECEIVED_BYTES).increment(data.len() as u64);
                    inner.count_received(data.len() as u64);
                    let event = Event::PieceArrived {
                        connection_id,
                        piece: header.piece,
                        data,
                    };
                    let _ = torrent.events.send(event).await;
                }
                Err(
                    error @ (TransportError::PieceLength { .. } | TransportError::Protocol { .. }),
                ) => {
                    tracing::debug!(%digest, piece = header.piece, %error, "piece refused");
                    let event = Event::PieceRefused {
                        connection_id,
                        piece: header.piece,
                    };
                    let _ = torrent.events.send(event).await;
                }
                Err(error) => {
                    tracing::debug!(%digest, piece = header.piece, %error, "piece stream failed")
                }
            }
        });
    }
}

/// Dials `peer` for a blob, exchanges handshakes and reports the outcome to the torrent.
pub(super) async fn dial(
    inner: Arc<Inner>,
    torrent: mpsc::Sender<Event>,
    peer: PeerInfo,
    ours: pb::Message,
    num_pieces: u32,
) {
    let result = dial_inner(&inner, &peer, ours, num_pieces).await;
    let _ = torrent.send(Event::Dialed { peer, result }).await;
}

/// Why a dial did not produce a link.
#[derive(Debug)]
pub(super) enum DialError {
    /// The peer answered but declined politely (it kept another link to us): no blacklisting.
    Duplicate,
    /// Anything else: unreachable, refused, bad handshake.
    Failed(String),
}

async fn dial_inner(
    inner: &Arc<Inner>,
    peer: &PeerInfo,
    ours: pb::Message,
    num_pieces: u32,
) -> Result<PendingLink, DialError> {
    let failed = |e: &dyn std::fmt::Display| DialError::Failed(e.to_string());
    let connection = inner
        .endpoint
        .connect(peer.addr)
        .await
        .map_err(|e| failed(&e))?;
    inner.serve_connection(&connection);
    let (mut sender, mut receiver) = quic::open_control(&connection)
        .await
        .map_err(|e| failed(&e))?;
    sender.send(&ours).await.map_err(|e| failed(&e))?;
    let reply = tokio::time::timeout(inner.config.handshake_timeout, receiver.recv())
        .await
        .map_err(|_| DialError::Failed("no handshake reply in time".into()))?
        .map_err(|e| failed(&e))?;
    match reply {
        Some(pb::Message {
            kind: Some(Kind::Handshake(handshake)),
        }) => {
            let parsed =
                parse_handshake(&handshake, &connection, num_pieces).map_err(DialError::Failed)?;
            if parsed.peer_id != peer.peer_id {
                return Err(DialError::Failed(format!(
                    "answered as peer {} instead of {}",
                    parsed.peer_id, peer.peer_id
                )));
            }
            Ok(PendingLink {
                connection,
                sender,
                receiver,
                peer: parsed,
            })
        }
        Some(pb::Message {
            kind: Some(Kind::Error(error)),
        }) if error.code == Code::DuplicateConnection as i32 => Err(DialError::Duplicate),
        Some(pb::Message {
            kind: Some(Kind::Error(error)),
        }) => Err(DialError::Failed(format!("refused: {}", error.message))),
        other => Err(DialError::Failed(format!("unexpected reply {other:?}"))),
    }
}

/// The running halves of a link: a writer draining `outbox` onto the control stream, and a
/// reader reporting messages to the torrent.
pub(super) struct LinkTasks {
    pub(super) outbox: mpsc::Sender<pb::Message>,
    reader: JoinHandle<()>,
}

impl LinkTasks {
    /// Spawns the writer and the reader as tasks of `inner`.
    pub(super) fn spawn(
        inner: &Inner,
        link: LinkId,
        sender: ControlSender,
        mut receiver: ControlReceiver,
        first: Option<pb::Message>,
        torrent: mpsc::Sender<Event>,
    ) -> Self {
        // Bounded: a peer that stops reading its control stream fills this and is dropped
        // rather than buffered without limit.
        let (outbox, mut pending) = mpsc::channel::<pb::Message>(1024);
        if let Some(first) = first {
            let _ = outbox.try_send(first);
        }
        let mut sender = sender;
        inner.spawn_until_shutdown(async move {
            while let Some(message) = pending.recv().await {
                if sender.send(&message).await.is_err() {
                    return;
                }
            }
            sender.finish().await;
        });
        let reader = inner.tasks.spawn(async move {
            loop {
                match receiver.recv().await {
                    Ok(Some(message)) => {
                        if torrent
                            .send(Event::Message { link, message })
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Ok(None) | Err(_) => {
                        let _ = torrent.send(Event::LinkClosed { link }).await;
                        return;
                    }
                }
            }
        });
        Self { outbox, reader }
    }
}

impl Drop for LinkTasks {
    fn drop(&mut self) {
        // The writer ends when the outbox is dropped; the reader would otherwise wait for the
        // peer.
        self.reader.abort();
    }
}
