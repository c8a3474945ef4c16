//! Two clusters, two CAs: material for dialing a remote cluster, and a server that trusts a
//! remote cluster's CA by name.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use kraken_tls::{
    Caller, DevCa, LeafOptions, Role, TlsError, TlsMaterial, Trust, TrustDomains,
    caller_from_verified_chain,
};
use tokio::sync::oneshot;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Server};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::common::{setup, valid};

/// A health server presenting `material`, accepting client certificates from `domains`,
/// and recording who each call came from.
struct TrustingServer {
    addr: SocketAddr,
    callers: Arc<Mutex<Vec<Caller>>>,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl TrustingServer {
    async fn start(material: &TlsMaterial, domains: TrustDomains) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_reporter, health) = tonic_health::server::health_reporter();
        let callers = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&callers);
        let tls = material.tonic_server_tls_with(&domains).unwrap();
        let service = InterceptedService::new(health, move |req: tonic::Request<()>| {
            let chain = req.peer_certs();
            let caller = caller_from_verified_chain(chain.as_deref().map(Vec::as_slice), &domains)?;
            record.lock().unwrap().push(caller);
            Ok(req)
        });
        let (tx, rx) = oneshot::channel::<()>();
        let router = Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(service);
        let task = tokio::spawn(router.serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            async {
                let _ = rx.await;
            },
        ));
        Self {
            addr,
            callers,
            shutdown: Some(tx),
            task,
        }
    }

    async fn check(&self, tls: ClientTlsConfig) -> Result<(), String> {
        let channel = Channel::from_shared(format!("https://{}", self.addr))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .map_err(|e| format!("{e:?}"))?;
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(drop)
            .map_err(|e| format!("{e:?}"))
    }

    async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        (&mut self.task).await.unwrap().unwrap();
    }
}

fn for_remote(own_ca: &DevCa, role: Role, remote_ca: &DevCa) -> TlsMaterial {
    let leaf = own_ca.issue(role, &LeafOptions::default()).unwrap();
    TlsMaterial::from_pem_for_remote(
        remote_ca.cert_pem(),
        own_ca.cert_pem(),
        &leaf.cert_pem,
        &leaf.key_pem,
    )
    .unwrap()
}

#[tokio::test]
async fn for_remote_material_trusts_the_remote_ca_and_presents_our_cert() {
    setup();
    let (a, b) = (DevCa::new().unwrap(), DevCa::new().unwrap());
    // Cluster b's build-index trusts cluster a by name.
    let b_material = valid(&b, Role::BuildIndex);
    let domains = TrustDomains::from_pem(&b_material, &[("a", a.cert_pem().as_bytes())]).unwrap();
    let server = TrustingServer::start(&b_material, domains).await;

    // a's build-index dials b with its own certificate and b's CA as the roots.
    let dialer = for_remote(&a, Role::BuildIndex, &b);
    assert_eq!(dialer.role().unwrap(), Role::BuildIndex);
    server
        .check(dialer.tonic_client_tls("localhost"))
        .await
        .unwrap();
    // b's own clients still come in as local.
    server
        .check(valid(&b, Role::Client).tonic_client_tls("localhost"))
        .await
        .unwrap();
    let callers = server.callers.lock().unwrap().clone();
    assert_eq!(
        callers
            .iter()
            .map(|c| (c.identity.role, c.trust.clone()))
            .collect::<Vec<_>>(),
        [
            (Role::BuildIndex, Trust::Remote("a".into())),
            (Role::Client, Trust::Local)
        ]
    );

    // a's ordinary material trusts only a's CA: it refuses b's server.
    let err = server
        .check(valid(&a, Role::BuildIndex).tonic_client_tls("localhost"))
        .await
        .unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
    // Material for the wrong remote refuses b's server too.
    let c = DevCa::new().unwrap();
    let err = server
        .check(for_remote(&a, Role::BuildIndex, &c).tonic_client_tls("localhost"))
        .await
        .unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
    // A cluster b does not list is refused in the handshake, before any call.
    let err = server
        .check(for_remote(&c, Role::BuildIndex, &b).tonic_client_tls("localhost"))
        .await
        .unwrap_err();
    assert!(err.contains("UnknownCA"), "{err}");
    assert_eq!(
        server.callers.lock().unwrap().len(),
        2,
        "a call got through"
    );
    server.stop().await;
}

#[test]
fn for_remote_material_checks_our_cert_against_our_own_ca_and_never_serves() {
    setup();
    let (a, b) = (DevCa::new().unwrap(), DevCa::new().unwrap());
    let leaf = a.issue(Role::Origin, &LeafOptions::default()).unwrap();
    // A certificate our CA did not sign is refused at load, naming our CA.
    let err =
        TlsMaterial::from_pem_for_remote(a.cert_pem(), b.cert_pem(), &leaf.cert_pem, &leaf.key_pem)
            .unwrap_err();
    assert!(matches!(err, TlsError::NotSignedByCa { .. }), "{err:?}");
    assert!(err.to_string().contains("<own ca>"), "{err}");

    // Its roots are the remote's: serving with it would admit the remote's certificates
    // as our own, so every server config is refused.
    let dialer = for_remote(&a, Role::Origin, &b);
    assert!(matches!(
        dialer.server_config(&[b"h2"]).unwrap_err(),
        TlsError::DialOnly
    ));
    assert!(matches!(
        dialer
            .quinn_server_config(&[kraken_tls::ALPN_P2P])
            .unwrap_err(),
        TlsError::DialOnly
    ));
    assert!(matches!(
        dialer.tonic_server_tls().unwrap_err(),
        TlsError::DialOnly
    ));

    // A server's trust domains must be built from its own material.
    let server = valid(&a, Role::Origin);
    let elsewhere = TrustDomains::local_only(&valid(&b, Role::Origin));
    assert!(matches!(
        server.tonic_server_tls_with(&elsewhere).unwrap_err(),
        TlsError::TrustDomainsMismatch
    ));
}

#[test]
fn load_for_remote_reads_the_files() {
    setup();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (DevCa::new().unwrap(), DevCa::new().unwrap());
    let leaf = a.issue(Role::BuildIndex, &LeafOptions::default()).unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let own = kraken_tls::TlsConfig {
        ca: write("ca.pem", a.cert_pem()),
        cert: write("build-index.pem", &leaf.cert_pem),
        key: write("build-index.key", &leaf.key_pem),
    };
    let remote_ca = write("remote-b-ca.pem", b.cert_pem());
    let material = TlsMaterial::load_for_remote(&own, &remote_ca).unwrap();
    assert_eq!(material.role().unwrap(), Role::BuildIndex);
    assert_eq!(material.roots().len(), 1);

    let err = TlsMaterial::load_for_remote(&own, &dir.path().join("nope.pem")).unwrap_err();
    assert!(err.to_string().contains("nope.pem"), "{err}");
}
