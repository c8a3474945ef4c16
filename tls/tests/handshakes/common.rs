use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kraken_tls::{
    DevCa, IssuedCert, LeafOptions, PeerIdentity, Role, ServerCheck, TlsMaterial, crypto_provider,
    install_crypto_provider, peer_identity_from_quinn, peer_identity_from_rustls,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub(crate) const ALPN_TEST: &[u8] = b"kraken-test/1";

/// Every exchange gives up after this, so a broken handshake fails a test instead of
/// hanging the run.
const DEADLINE: Duration = Duration::from_secs(15);

pub(crate) fn setup() {
    install_crypto_provider();
}

pub(crate) fn material(ca: &DevCa, role: Role, options: &LeafOptions) -> TlsMaterial {
    let issued = ca.issue(role, options).unwrap();
    TlsMaterial::from_pem(ca.cert_pem(), &issued.cert_pem, &issued.key_pem).unwrap()
}

pub(crate) fn valid(ca: &DevCa, role: Role) -> TlsMaterial {
    material(ca, role, &LeafOptions::default())
}

pub(crate) fn expired(ca: &DevCa, role: Role) -> TlsMaterial {
    material(ca, role, &LeafOptions::expired())
}

/// A client config that trusts `trusting`'s CA but presents no certificate at all: what a
/// stranger or a misconfigured tool would send. Only tests may build one.
pub(crate) fn anonymous_client(trusting: &TlsMaterial, alpn: &[u8]) -> rustls::ClientConfig {
    let mut config = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(trusting.roots())
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    config
}

/// A client config that trusts `trusting`'s CA but presents `cert`, typically issued by
/// another CA: a config `TlsMaterial` refuses to build, so tests assemble it by hand.
pub(crate) fn foreign_client(
    trusting: &TlsMaterial,
    cert: &IssuedCert,
    alpn: &[u8],
) -> rustls::ClientConfig {
    let mut config = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(trusting.roots())
        .with_client_auth_cert(vec![cert.cert_der.clone()], cert.key_der.clone_key())
        .unwrap();
    config.alpn_protocols = vec![alpn.to_vec()];
    config
}

/// What each side saw: the peer's identity, or the error that ended the exchange.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) server: Result<PeerIdentity, String>,
    pub(crate) client: Result<PeerIdentity, String>,
    /// The cipher suite the client negotiated, when the handshake got that far.
    pub(crate) suite: Option<rustls::CipherSuite>,
    /// The application protocol the client negotiated (TCP exchanges), if any.
    pub(crate) alpn: Option<Vec<u8>>,
}

impl Outcome {
    #[track_caller]
    pub(crate) fn assert_ok(&self, server_sees: Role, client_sees: Role) {
        assert_eq!(
            self.server.as_ref().map(|id| id.role),
            Ok(server_sees),
            "{self:?}"
        );
        assert_eq!(
            self.client.as_ref().map(|id| id.role),
            Ok(client_sees),
            "{self:?}"
        );
    }

    /// Both sides failed, and the side that detected the problem says `why`.
    #[track_caller]
    pub(crate) fn assert_refused_by_server(&self, why: &str) {
        let server = self
            .server
            .as_ref()
            .expect_err("server accepted the client");
        assert!(self.client.is_err(), "client thinks it succeeded: {self:?}");
        assert!(
            server.contains(why),
            "server error {server:?} lacks {why:?}"
        );
    }

    #[track_caller]
    pub(crate) fn assert_refused_by_client(&self, why: &str) {
        let client = self
            .client
            .as_ref()
            .expect_err("client accepted the server");
        assert!(self.server.is_err(), "server thinks it succeeded: {self:?}");
        assert!(
            client.contains(why),
            "client error {client:?} lacks {why:?}"
        );
    }
}

async fn deadline<T>(
    what: &str,
    fut: impl Future<Output = Result<T, String>>,
) -> Result<T, String> {
    match tokio::time::timeout(DEADLINE, fut).await {
        Ok(result) => result,
        Err(_) => Err(format!("{what}: timed out")),
    }
}

/// One TLS-over-TCP exchange: handshake, then a ping/pong so that a client certificate
/// rejected after the client's half of the TLS 1.3 handshake still fails the client.
pub(crate) async fn tcp_exchange(
    server: rustls::ServerConfig,
    client: rustls::ClientConfig,
    server_name: &str,
) -> Outcome {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let server_task = tokio::spawn(deadline("server", async move {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        let identity = peer_identity_from_rustls(tls.get_ref().1).map_err(|e| e.to_string())?;
        let mut ping = [0u8; 4];
        tls.read_exact(&mut ping).await.map_err(|e| e.to_string())?;
        tls.write_all(b"pong").await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())?;
        Ok(identity)
    }));

    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let name = rustls_pki_types::ServerName::try_from(server_name.to_owned()).unwrap();
    let client = deadline("client", async move {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let identity = peer_identity_from_rustls(tls.get_ref().1).map_err(|e| e.to_string())?;
        let suite = tls.get_ref().1.negotiated_cipher_suite().map(|s| s.suite());
        let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
        let mut pong = [0u8; 4];
        tls.read_exact(&mut pong).await.map_err(|e| e.to_string())?;
        assert_eq!(&pong, b"pong");
        Ok((identity, suite, alpn))
    })
    .await;
    let server = server_task.await.unwrap();
    let (client, suite, alpn) = match client {
        Ok((identity, suite, alpn)) => (Ok(identity), suite, alpn),
        Err(e) => (Err(e), None, None),
    };
    Outcome {
        server,
        client,
        suite,
        alpn,
    }
}

/// One QUIC exchange on 127.0.0.1:0: connect, a bidirectional stream carrying ping/pong,
/// and each side's view of the other's role.
pub(crate) async fn quic_exchange(
    server: quinn::ServerConfig,
    client: quinn::ClientConfig,
    server_name: &str,
) -> Outcome {
    let localhost: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let server_endpoint = quinn::Endpoint::server(server, localhost).unwrap();
    let addr = server_endpoint.local_addr().unwrap();
    let server_task = tokio::spawn(deadline("server", async move {
        let incoming = server_endpoint
            .accept()
            .await
            .ok_or_else(|| "endpoint closed".to_owned())?;
        let conn = incoming.await.map_err(|e| e.to_string())?;
        let identity = peer_identity_from_quinn(&conn).map_err(|e| e.to_string())?;
        let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
        let ping = recv.read_to_end(16).await.map_err(|e| e.to_string())?;
        assert_eq!(ping, b"ping");
        send.write_all(b"pong").await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        // The client closes once it has read the answer.
        conn.closed().await;
        Ok(identity)
    }));

    let client_endpoint = quinn::Endpoint::client(localhost).unwrap();
    let server_name = server_name.to_owned();
    let client = deadline("client", async {
        let conn = client_endpoint
            .connect_with(client, addr, &server_name)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let identity = peer_identity_from_quinn(&conn).map_err(|e| e.to_string())?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(b"ping").await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        let pong = recv.read_to_end(16).await.map_err(|e| e.to_string())?;
        assert_eq!(pong, b"pong");
        conn.close(0u32.into(), b"done");
        Ok(identity)
    })
    .await;
    let server = server_task.await.unwrap();
    Outcome {
        server,
        client,
        suite: None,
        alpn: None,
    }
}

pub(crate) fn quic_client(material: &TlsMaterial) -> quinn::ClientConfig {
    material
        .quinn_client_config(&[kraken_tls::ALPN_P2P], ServerCheck::Hostname)
        .unwrap()
}

pub(crate) fn quic_server(material: &TlsMaterial) -> quinn::ServerConfig {
    material
        .quinn_server_config(&[kraken_tls::ALPN_P2P])
        .unwrap()
}
