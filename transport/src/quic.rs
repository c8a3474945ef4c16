//! The QUIC peer transport: one endpoint per process, one connection per peer pair, a
//! bidirectional control stream per shared blob and a unidirectional stream per piece.
//!
//! Both ends present certificates from the cluster CA (ALPN `kraken-p2p/1`); a peer whose
//! certificate is missing, from another CA, expired, or of a role other than agent or origin
//! never completes the handshake.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use kraken_proto::p2p::v1 as pb;
use kraken_tls::{ALPN_P2P, Role, ServerCheck, TlsMaterial};
use prost::Message as _;
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use tokio::task::JoinSet;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

use crate::bandwidth::BandwidthLimiter;

/// Roles allowed to take part in the peer protocol.
pub const PEER_ROLES: &[Role] = &[Role::Agent, Role::Origin];

/// Largest control message accepted (a handshake carries a bitfield: 64 KiB covers 512 Ki
/// pieces).
pub const MAX_CONTROL_FRAME: usize = 64 * 1024;

/// Largest piece payload accepted on a piece stream.
pub const MAX_PIECE_BYTES: u64 = 64 * 1024 * 1024;

const MAX_PIECE_HEADER: usize = 1024;

/// Application error code with which a piece stream is stopped when its header or length is
/// refused.
pub const PIECE_REFUSED: u32 = 2;

/// QUIC settings. The defaults follow what was measured on these machines (bench/README.md): large
/// UDP payloads on both ends with MTU discovery capped below the GSO batch limit, and windows
/// wide enough that one connection can carry several pieces at full speed.
#[derive(Debug, Clone)]
pub struct QuicTuning {
    /// Largest UDP payload we advertise; both peers must allow large datagrams.
    pub max_udp_payload_size: u16,
    /// Upper bound of path MTU discovery. Above ~6450 a GSO batch exceeds 64 KiB and is
    /// silently dropped.
    pub mtu_discovery_upper_bound: u16,
    pub stream_receive_window: u32,
    pub connection_receive_window: u32,
    pub send_window: u64,
    /// Concurrent piece streams a peer may open to us. Each may hold up to one requested
    /// piece in memory while it arrives, so this bounds what one peer can make us buffer.
    pub max_concurrent_uni_streams: u32,
    /// Concurrent blobs (control streams) per connection.
    pub max_concurrent_bidi_streams: u32,
    pub keep_alive_interval: Duration,
    pub idle_timeout: Duration,
    /// How long to wait for a peer to answer a dial.
    pub connect_timeout: Duration,
    /// How long an inbound handshake may take before it is dropped. Handshakes run
    /// concurrently, so a slow or silent one only holds its own slot.
    pub handshake_timeout: Duration,
    /// Inbound handshakes in progress at once; further connection attempts are refused until
    /// one finishes.
    pub max_pending_handshakes: usize,
    /// Inbound connections (established or handshaking) from one IP address at once.
    pub max_connections_per_ip: usize,
}

impl Default for QuicTuning {
    fn default() -> Self {
        Self {
            max_udp_payload_size: 65527,
            mtu_discovery_upper_bound: 6400,
            stream_receive_window: 8 * 1024 * 1024,
            connection_receive_window: 64 * 1024 * 1024,
            send_window: 64 * 1024 * 1024,
            max_concurrent_uni_streams: 64,
            max_concurrent_bidi_streams: 4096,
            keep_alive_interval: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            max_pending_handshakes: 256,
            max_connections_per_ip: 64,
        }
    }
}

impl QuicTuning {
    /// These settings with a component's `limits.p2p` section applied: what an inbound peer
    /// may hold (handshakes, connections per IP, piece streams per connection).
    pub fn with_limits(self, limits: &kraken_config::limits::P2pLimitsConfig) -> Self {
        Self {
            handshake_timeout: limits.handshake_timeout,
            max_pending_handshakes: limits.max_pending_handshakes,
            max_connections_per_ip: limits.max_connections_per_ip,
            max_concurrent_uni_streams: limits.max_piece_streams_per_connection,
            ..self
        }
    }
}

/// Why a transport operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("TLS setup for the peer endpoint")]
    Tls(#[source] kraken_tls::TlsError),
    #[error("invalid QUIC configuration: {0}")]
    Config(String),
    #[error("binding the peer endpoint on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to peer {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: quinn::ConnectError,
    },
    #[error("connection to peer {addr} failed")]
    Connection {
        addr: SocketAddr,
        #[source]
        source: quinn::ConnectionError,
    },
    #[error("peer {addr} did not answer within {timeout:?}")]
    ConnectTimeout { addr: SocketAddr, timeout: Duration },
    #[error("peer {addr} is not an agent or origin: {reason}")]
    PeerRole { addr: SocketAddr, reason: String },
    #[error("peer stream failed")]
    Stream(#[source] std::io::Error),
    #[error("peer sent a malformed {what}: {reason}")]
    Protocol { what: &'static str, reason: String },
    #[error("peer announced a {announced} byte piece where {expected} bytes were requested")]
    PieceLength { announced: u64, expected: u64 },
    #[error("peer closed the stream")]
    Closed,
    #[error("the endpoint is shut down")]
    EndpointClosed,
}

/// The process's QUIC endpoint: listens for peers and dials them, keeping at most one
/// connection per remote address.
#[derive(Clone)]
pub struct PeerEndpoint {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: Endpoint,
    /// The address families this socket can send to (see [`PeerEndpoint::reaches`]).
    families: Families,
    client_config: quinn::ClientConfig,
    connect_timeout: Duration,
    handshake_timeout: Duration,
    max_pending_handshakes: usize,
    /// Inbound handshakes in flight. Kept across `accept` calls, so a caller that stops
    /// waiting (a `select!`) loses none; a lock, so one caller drives them at a time.
    pending: tokio::sync::Mutex<JoinSet<Option<Connection>>>,
    per_ip: Arc<IpLimit>,
    /// Live connections by remote address, shared by dialled and accepted ones. Each slot is a
    /// mutex so concurrent dials of one peer make one connection.
    pool: Mutex<HashMap<SocketAddr, Arc<tokio::sync::Mutex<Option<Connection>>>>>,
}

impl std::fmt::Debug for PeerEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerEndpoint")
            .field("local", &self.local_addr().ok())
            .finish()
    }
}

impl PeerEndpoint {
    /// Binds a UDP socket on `addr` (port 0 picks one) and sets up mutual TLS from `tls`.
    pub fn bind(
        addr: SocketAddr,
        tls: &TlsMaterial,
        tuning: &QuicTuning,
    ) -> Result<Self, TransportError> {
        let transport = Arc::new(transport_config(tuning)?);
        let mut server_config = tls
            .quinn_server_config(&[ALPN_P2P])
            .map_err(TransportError::Tls)?;
        server_config.transport_config(transport.clone());
        let mut client_config = tls
            .quinn_client_config(&[ALPN_P2P], ServerCheck::RoleOnly(PEER_ROLES))
            .map_err(TransportError::Tls)?;
        client_config.transport_config(transport);

        let mut endpoint_config = quinn::EndpointConfig::default();
        endpoint_config
            .max_udp_payload_size(tuning.max_udp_payload_size)
            .map_err(|e| TransportError::Config(e.to_string()))?;
        let (socket, families) =
            bind_udp(addr).map_err(|source| TransportError::Bind { addr, source })?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| TransportError::Config("no async runtime found".into()))?;
        let endpoint = Endpoint::new(endpoint_config, Some(server_config), socket, runtime)
            .map_err(|source| TransportError::Bind { addr, source })?;
        Ok(Self {
            inner: Arc::new(Inner {
                endpoint,
                families,
                client_config,
                connect_timeout: tuning.connect_timeout,
                handshake_timeout: tuning.handshake_timeout,
                max_pending_handshakes: tuning.max_pending_handshakes.max(1),
                pending: tokio::sync::Mutex::new(JoinSet::new()),
                per_ip: Arc::new(IpLimit::new(tuning.max_connections_per_ip.max(1))),
                pool: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Whether this endpoint can dial `addr`: a socket bound to an IPv4 address cannot send to
    /// IPv6 ones and the reverse; one bound to `[::]` is dual-stack and reaches both. Peers
    /// filter a tracker's hand-out with this, so that a host of one family never counts the
    /// other family's peers as failed (and reports them to the tracker) for an address it could
    /// never have used.
    pub fn reaches(&self, addr: SocketAddr) -> bool {
        self.inner.families.reach(addr.ip())
    }

    pub fn local_addr(&self) -> Result<SocketAddr, TransportError> {
        self.inner
            .endpoint
            .local_addr()
            .map_err(TransportError::Stream)
    }

    /// The connection to `addr`, dialling it if there is none. The peer must present a
    /// certificate from our CA with the agent or origin role.
    pub async fn connect(&self, addr: SocketAddr) -> Result<Connection, TransportError> {
        let slot = self.slot(addr);
        let mut guard = slot.lock().await;
        if let Some(connection) = guard.as_ref()
            && connection.close_reason().is_none()
        {
            return Ok(connection.clone());
        }
        let connecting = self
            .inner
            .endpoint
            .connect_with(self.inner.client_config.clone(), addr, "kraken-peer")
            .map_err(|source| TransportError::Connect { addr, source })?;
        let timeout = self.inner.connect_timeout;
        let connection = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| TransportError::ConnectTimeout { addr, timeout })?
            .map_err(|source| TransportError::Connection { addr, source })?;
        check_role(&connection)?;
        *guard = Some(connection.clone());
        Ok(connection)
    }

    /// The next peer that connected to us, after its handshake and role check. `None` once the
    /// endpoint is closed. Peers that fail the handshake are logged and skipped.
    ///
    /// Handshakes run concurrently, each bounded by the handshake timeout, so a host that
    /// sends an Initial and goes silent delays nobody else. At most `max_pending_handshakes`
    /// run at once and at most `max_connections_per_ip` connections come from one address;
    /// attempts beyond either are refused. Cancel-safe.
    pub async fn accept(&self) -> Option<Connection> {
        let mut pending = self.inner.pending.lock().await;
        loop {
            let room = pending.len() < self.inner.max_pending_handshakes;
            tokio::select! {
                incoming = self.inner.endpoint.accept() => {
                    let incoming = incoming?;
                    let remote = incoming.remote_address();
                    if !room {
                        tracing::debug!(%remote, "too many pending handshakes: refused");
                        metrics::counter!("kraken_p2p_refused_handshakes_total", "reason" => "pending").increment(1);
                        incoming.refuse();
                        continue;
                    }
                    let Some(permit) = self.inner.per_ip.try_acquire(remote.ip()) else {
                        tracing::debug!(%remote, "too many connections from this address: refused");
                        metrics::counter!("kraken_p2p_refused_handshakes_total", "reason" => "per_ip").increment(1);
                        incoming.refuse();
                        continue;
                    };
                    pending.spawn(handshake(incoming, self.inner.handshake_timeout, permit));
                }
                Some(done) = pending.join_next(), if !pending.is_empty() => {
                    let Ok(Some(connection)) = done else { continue };
                    // Remember it, so dialling this peer back reuses the connection.
                    let slot = self.slot(connection.remote_address());
                    if let Ok(mut guard) = slot.try_lock()
                        && guard.as_ref().is_none_or(|c| c.close_reason().is_some())
                    {
                        *guard = Some(connection.clone());
                    }
                    return Some(connection);
                }
            }
        }
    }

    /// Connections of this endpoint, including those still handshaking.
    pub fn open_connections(&self) -> usize {
        self.inner.endpoint.open_connections()
    }

    /// Closes every connection and stops accepting.
    pub fn close(&self) {
        self.inner.endpoint.close(0u32.into(), b"shutdown");
    }

    /// Waits until every connection has closed cleanly.
    pub async fn wait_idle(&self) {
        self.inner.endpoint.wait_idle().await;
    }

    fn slot(&self, addr: SocketAddr) -> Arc<tokio::sync::Mutex<Option<Connection>>> {
        let mut pool = match self.inner.pool.lock() {
            Ok(pool) => pool,
            Err(poisoned) => poisoned.into_inner(),
        };
        // Drop slots of closed connections now and then so the pool does not grow forever.
        if pool.len() > 1024 {
            pool.retain(|_, slot| {
                slot.try_lock()
                    .map(|c| c.as_ref().is_some_and(|c| c.close_reason().is_none()))
                    .unwrap_or(true)
            });
        }
        pool.entry(addr).or_default().clone()
    }
}

/// The address families a bound UDP socket can send to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Families {
    v4: bool,
    v6: bool,
}

impl Families {
    fn reach(self, ip: IpAddr) -> bool {
        match ip.to_canonical() {
            IpAddr::V4(_) => self.v4,
            IpAddr::V6(_) => self.v6,
        }
    }
}

/// Binds the peer socket. On `[::]` it is made dual-stack explicitly (`IPV6_V6ONLY` off)
/// rather than left to the host's `net.ipv6.bindv6only` default, so "listen on `[::]`" means
/// the same on every host: IPv6 and IPv4 peers alike (quinn maps IPv4 destinations for an IPv6
/// socket). A specific address reaches its own family only (an IPv4-mapped one: IPv4).
fn bind_udp(addr: SocketAddr) -> std::io::Result<(std::net::UdpSocket, Families)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    let families = match addr.ip() {
        IpAddr::V4(_) => Families {
            v4: true,
            v6: false,
        },
        IpAddr::V6(ip) if ip.is_unspecified() => {
            socket.set_only_v6(false)?;
            Families { v4: true, v6: true }
        }
        IpAddr::V6(ip) if ip.to_ipv4_mapped().is_some() => Families {
            v4: true,
            v6: false,
        },
        IpAddr::V6(_) => Families {
            v4: false,
            v6: true,
        },
    };
    socket.bind(&addr.into())?;
    Ok((socket.into(), families))
}

/// Completes one inbound handshake within `timeout` and checks the peer's role. The permit
/// counts the connection against its address's limit until the connection closes.
async fn handshake(
    incoming: quinn::Incoming,
    timeout: Duration,
    permit: IpPermit,
) -> Option<Connection> {
    let remote = incoming.remote_address();
    let connecting = match incoming.accept() {
        Ok(connecting) => connecting,
        Err(error) => {
            tracing::debug!(%remote, %error, "peer handshake failed");
            return None;
        }
    };
    // Dropping `connecting` on timeout abandons the handshake.
    let connection = match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(error)) => {
            tracing::debug!(%remote, %error, "peer handshake failed");
            return None;
        }
        Err(_) => {
            tracing::debug!(%remote, ?timeout, "peer handshake timed out");
            metrics::counter!("kraken_p2p_handshake_timeouts_total").increment(1);
            return None;
        }
    };
    if let Err(error) = check_role(&connection) {
        tracing::warn!(%remote, %error, "refused peer");
        connection.close(1u32.into(), b"role not allowed");
        return None;
    }
    let watched = connection.clone();
    tokio::spawn(async move {
        watched.closed().await;
        drop(permit);
    });
    Some(connection)
}

/// Counts inbound connections per remote IP address.
#[derive(Debug)]
struct IpLimit {
    max: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One inbound connection (or handshake) from `ip`; released on drop.
#[derive(Debug)]
struct IpPermit {
    limit: Arc<IpLimit>,
    ip: IpAddr,
}

impl IpLimit {
    fn new(max: usize) -> Self {
        Self {
            max,
            counts: Mutex::new(HashMap::new()),
        }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        match self.counts.lock() {
            Ok(counts) => counts,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<IpPermit> {
        let mut counts = self.counts();
        let count = counts.entry(ip).or_default();
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(IpPermit {
            limit: self.clone(),
            ip,
        })
    }
}

impl Drop for IpPermit {
    fn drop(&mut self) {
        let mut counts = self.limit.counts();
        if let Some(count) = counts.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

fn check_role(connection: &Connection) -> Result<Role, TransportError> {
    let addr = connection.remote_address();
    let role =
        kraken_tls::peer_role_from_quinn(connection).map_err(|e| TransportError::PeerRole {
            addr,
            reason: e.to_string(),
        })?;
    if !PEER_ROLES.contains(&role) {
        return Err(TransportError::PeerRole {
            addr,
            reason: format!("role is {role}"),
        });
    }
    Ok(role)
}

fn transport_config(tuning: &QuicTuning) -> Result<quinn::TransportConfig, TransportError> {
    let var = |value: u64| {
        quinn::VarInt::from_u64(value).map_err(|e| TransportError::Config(e.to_string()))
    };
    let mut config = quinn::TransportConfig::default();
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(tuning.mtu_discovery_upper_bound);
    config
        .mtu_discovery_config(Some(mtu))
        .stream_receive_window(var(u64::from(tuning.stream_receive_window))?)
        .receive_window(var(u64::from(tuning.connection_receive_window))?)
        .send_window(tuning.send_window)
        .max_concurrent_uni_streams(var(u64::from(tuning.max_concurrent_uni_streams))?)
        .max_concurrent_bidi_streams(var(u64::from(tuning.max_concurrent_bidi_streams))?)
        .keep_alive_interval(Some(tuning.keep_alive_interval))
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(tuning.idle_timeout)
                .map_err(|e| TransportError::Config(e.to_string()))?,
        ));
    Ok(config)
}

/// Writes length-delimited `kraken.p2p.v1.Message`s on a control stream.
pub struct ControlSender {
    inner: FramedWrite<SendStream, LengthDelimitedCodec>,
}

/// Reads length-delimited `kraken.p2p.v1.Message`s from a control stream.
pub struct ControlReceiver {
    inner: FramedRead<RecvStream, LengthDelimitedCodec>,
}

impl std::fmt::Debug for ControlSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ControlSender")
    }
}

impl std::fmt::Debug for ControlReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ControlReceiver")
    }
}

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_CONTROL_FRAME)
        .new_codec()
}

/// Wraps a bidirectional stream as a control stream.
pub fn control_stream(send: SendStream, recv: RecvStream) -> (ControlSender, ControlReceiver) {
    (
        ControlSender {
            inner: FramedWrite::new(send, codec()),
        },
        ControlReceiver {
            inner: FramedRead::new(recv, codec()),
        },
    )
}

/// Opens a new control stream on `connection`.
pub async fn open_control(
    connection: &Connection,
) -> Result<(ControlSender, ControlReceiver), TransportError> {
    let addr = connection.remote_address();
    let (send, recv) = connection
        .open_bi()
        .await
        .map_err(|source| TransportError::Connection { addr, source })?;
    Ok(control_stream(send, recv))
}

impl ControlSender {
    pub async fn send(&mut self, message: &pb::Message) -> Result<(), TransportError> {
        self.inner
            .send(Bytes::from(message.encode_to_vec()))
            .await
            .map_err(TransportError::Stream)
    }

    /// Finishes the stream after flushing what was sent.
    pub async fn finish(mut self) {
        let _ = SinkExt::<Bytes>::flush(&mut self.inner).await;
        let _ = self.inner.get_mut().finish();
    }
}

impl ControlReceiver {
    /// The next message; `Ok(None)` when the peer finished the stream.
    pub async fn recv(&mut self) -> Result<Option<pb::Message>, TransportError> {
        match self.inner.next().await {
            None => Ok(None),
            Some(Err(error)) => Err(TransportError::Stream(error)),
            Some(Ok(frame)) => pb::Message::decode(frame.freeze()).map(Some).map_err(|e| {
                TransportError::Protocol {
                    what: "control message",
                    reason: e.to_string(),
                }
            }),
        }
    }
}

/// Sends one piece on its own unidirectional stream: a length-prefixed header, then the bytes.
/// Returns once the peer acknowledged every byte.
pub async fn send_piece(
    connection: &Connection,
    header: &pb::PieceHeader,
    data: Bytes,
) -> Result<(), TransportError> {
    let mut stream = open_piece_stream(connection, header).await?;
    let write = |e: quinn::WriteError| TransportError::Stream(std::io::Error::other(e));
    stream.write_chunk(data).await.map_err(write)?;
    stream.finish().map_err(|_| TransportError::Closed)?;
    // Wait until the peer has the whole piece. Returning once it is merely buffered would let a
    // caller start every queued piece at once (the send window holds many), and each would then
    // crawl at a fraction of the link, so none could be re-shared early.
    match stream.stopped().await {
        Ok(None) => Ok(()),
        Ok(Some(_)) => Err(TransportError::Closed),
        Err(error) => Err(TransportError::Stream(std::io::Error::other(error))),
    }
}

/// Opens a piece stream and writes its length-prefixed header; the payload is the caller's to
/// write (and the stream to finish). [`send_piece`] is the usual way to send a piece.
pub async fn open_piece_stream(
    connection: &Connection,
    header: &pb::PieceHeader,
) -> Result<SendStream, TransportError> {
    let addr = connection.remote_address();
    let mut stream = connection
        .open_uni()
        .await
        .map_err(|source| TransportError::Connection { addr, source })?;
    let header = header.encode_to_vec();
    let mut prefix = BytesMut::with_capacity(4 + header.len());
    prefix.extend_from_slice(&(header.len() as u32).to_be_bytes());
    prefix.extend_from_slice(&header);
    stream
        .write_chunk(prefix.freeze())
        .await
        .map_err(|e| TransportError::Stream(std::io::Error::other(e)))?;
    Ok(stream)
}

/// Reads a piece stream's header. The payload follows; read it with [`read_piece_payload`].
pub async fn read_piece_header(stream: &mut RecvStream) -> Result<pb::PieceHeader, TransportError> {
    let mut len = [0u8; 4];
    read_exact(stream, &mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_PIECE_HEADER {
        return Err(TransportError::Protocol {
            what: "piece header",
            reason: format!("{len} bytes, more than the {MAX_PIECE_HEADER} allowed"),
        });
    }
    let mut header = vec![0u8; len];
    read_exact(stream, &mut header).await?;
    let header =
        pb::PieceHeader::decode(header.as_slice()).map_err(|e| TransportError::Protocol {
            what: "piece header",
            reason: e.to_string(),
        })?;
    if header.length > MAX_PIECE_BYTES {
        return Err(TransportError::Protocol {
            what: "piece header",
            reason: format!(
                "{} byte piece, more than the {MAX_PIECE_BYTES} allowed",
                header.length
            ),
        });
    }
    Ok(header)
}

/// Reads the payload of a piece we requested: exactly `expected` bytes (the length of the
/// piece we asked for, from our metainfo), and checks nothing follows them. Each chunk is
/// counted against the ingress limit as it arrives.
///
/// The peer's announced length is checked against `expected` before a byte of the payload is
/// read or any buffer allocated, and no more than `expected` bytes are ever buffered: a peer
/// that announces or sends more has the stream stopped with [`PIECE_REFUSED`].
pub async fn read_piece_payload(
    stream: &mut RecvStream,
    header: &pb::PieceHeader,
    expected: u64,
    limiter: &BandwidthLimiter,
) -> Result<Bytes, TransportError> {
    let refuse = |stream: &mut RecvStream, error: TransportError| {
        let _ = stream.stop(PIECE_REFUSED.into());
        Err(error)
    };
    if header.length != expected || header.offset != 0 {
        return refuse(
            stream,
            TransportError::PieceLength {
                announced: header.length,
                expected,
            },
        );
    }
    let Ok(len) = usize::try_from(expected) else {
        return refuse(
            stream,
            TransportError::Protocol {
                what: "piece",
                reason: "length does not fit in memory".into(),
            },
        );
    };
    let mut buffer = BytesMut::with_capacity(len);
    while buffer.len() < len {
        let want = len - buffer.len();
        match stream.read_chunk(want, true).await {
            Ok(Some(chunk)) => {
                limiter.ingress(chunk.bytes.len()).await;
                buffer.extend_from_slice(&chunk.bytes);
            }
            Ok(None) => {
                return Err(TransportError::Protocol {
                    what: "piece",
                    reason: format!("stream ended after {} of {len} bytes", buffer.len()),
                });
            }
            Err(error) => return Err(TransportError::Stream(std::io::Error::other(error))),
        }
    }
    match stream.read_chunk(1, true).await {
        Ok(None) => Ok(buffer.freeze()),
        Ok(Some(_)) => refuse(
            stream,
            TransportError::Protocol {
                what: "piece",
                reason: format!("more than the announced {len} bytes"),
            },
        ),
        Err(error) => Err(TransportError::Stream(std::io::Error::other(error))),
    }
}

async fn read_exact(stream: &mut RecvStream, buf: &mut [u8]) -> Result<(), TransportError> {
    stream.read_exact(buf).await.map_err(|error| match error {
        quinn::ReadExactError::FinishedEarly(_) => TransportError::Closed,
        quinn::ReadExactError::ReadError(error) => {
            TransportError::Stream(std::io::Error::other(error))
        }
    })
}
