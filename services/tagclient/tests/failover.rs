//! The tag client against real gRPC servers over mutual TLS: calls fall over from a
//! build-index that cannot be reached to the next one, an answer (even "not found") is final,
//! a host that keeps failing leaves the rotation, and when no host answers the error says how
//! many were tried and what the last one did.
//!
//! The servers are small `TagService`s with canned tags, not whole build-indexes: what is
//! tested is the client's choice of host, which only sees answers and network errors.

// Test helpers outside `#[test]` functions: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use kraken_config::cluster::{PassiveHealthCheckConfig, UpstreamConfig};
use kraken_oci::TaggedName;
use kraken_proto::buildindex::v1::tag_service_server::{TagService, TagServiceServer};
use kraken_proto::buildindex::v1::{
    GetRequest, GetResponse, HasRequest, HasResponse, ListRepositoryRequest,
    ListRepositoryResponse, ListRequest, ListResponse, PutRequest, PutResponse, ReplicateRequest,
    ReplicateResponse,
};
use kraken_tagclient::{TagClient, TagClientError};
use kraken_tls::{DevPkiOptions, Role, TlsMaterial, generate_dev_pki};
use kraken_transport::grpc::{GrpcServer, GrpcServerLimits};
use tokio::net::TcpListener;
use tonic::{Code, Request, Response, Status};

/// A build-index that knows `tags` and nothing else.
#[derive(Clone)]
struct Canned {
    tags: HashMap<String, String>,
}

#[tonic::async_trait]
impl TagService for Canned {
    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let tag = request.into_inner().tag;
        match self.tags.get(&tag) {
            Some(digest) => Ok(Response::new(GetResponse {
                digest: digest.clone(),
            })),
            None => Err(Status::not_found(format!("tag {tag} not found"))),
        }
    }

    async fn has(&self, request: Request<HasRequest>) -> Result<Response<HasResponse>, Status> {
        let digest = self.tags.get(&request.into_inner().tag);
        Ok(Response::new(HasResponse {
            exists: digest.is_some(),
            digest: digest.cloned().unwrap_or_default(),
            version: 0,
        }))
    }

    async fn put(&self, _: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        Err(Status::unimplemented("read-only"))
    }

    async fn list(&self, _: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        Err(Status::unimplemented("read-only"))
    }

    async fn list_repository(
        &self,
        _: Request<ListRepositoryRequest>,
    ) -> Result<Response<ListRepositoryResponse>, Status> {
        Err(Status::unimplemented("read-only"))
    }

    async fn replicate(
        &self,
        _: Request<ReplicateRequest>,
    ) -> Result<Response<ReplicateResponse>, Status> {
        Err(Status::unimplemented("read-only"))
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    server_tls: TlsMaterial,
    client_tls: TlsMaterial,
}

fn fixture() -> Fixture {
    kraken_tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let pki = generate_dev_pki(dir.path(), &DevPkiOptions::default()).unwrap();
    Fixture {
        server_tls: TlsMaterial::load(&pki.tls_config(Role::BuildIndex)).unwrap(),
        client_tls: TlsMaterial::load(&pki.tls_config(Role::Agent)).unwrap(),
        _dir: dir,
    }
}

/// A running canned build-index; stops when dropped, or with [`Server::stop`].
struct Server {
    address: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), kraken_transport::grpc::GrpcError>>,
}

impl Server {
    /// Stops accepting, and returns once every connection is closed.
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("hang guard: the server stops")
            .unwrap()
            .unwrap();
    }
}

async fn serve(tls: &TlsMaterial, tags: &[(&str, &str)]) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let service = Canned {
        tags: tags
            .iter()
            .map(|(tag, digest)| ((*tag).to_owned(), (*digest).to_owned()))
            .collect(),
    };
    let server = GrpcServer::new(tls, GrpcServerLimits::default())
        .unwrap()
        .add_service(TagServiceServer::new(service));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(listener, async {
        let _ = stopped.await;
    }));
    Server {
        address,
        stop,
        task,
    }
}

/// An address nothing listens on (bound, then closed).
async fn dead_address() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().to_string()
}

fn client(tls: &TlsMaterial, hosts: &[&str], fails: u32) -> TagClient {
    let mut upstream = UpstreamConfig::of(hosts.iter().copied());
    upstream.healthcheck = PassiveHealthCheckConfig {
        fails,
        fail_timeout: Duration::from_secs(600),
    };
    TagClient::new(&upstream, tls).unwrap()
}

const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

fn tag(name: &str) -> TaggedName {
    name.parse().unwrap()
}

fn failures(client: &TagClient, host: &str) -> (bool, u64) {
    let status = client
        .hosts()
        .into_iter()
        .find(|s| s.host == host)
        .unwrap_or_else(|| panic!("{host} is not a member"));
    (status.healthy, status.failures)
}

#[tokio::test]
async fn a_call_falls_over_to_the_next_host_and_a_failing_host_leaves_the_rotation() {
    let f = fixture();
    let dead = dead_address().await;
    let live = serve(&f.server_tls, &[("app:1", DIGEST)]).await;
    let client = client(&f.client_tls, &[&dead, &live.address], 2);

    // The dead host is listed first; the live one answers.
    let digest = client.resolve(&tag("app:1")).await.unwrap();
    assert_eq!(digest.to_string(), DIGEST);
    assert_eq!(failures(&client, &dead), (true, 1), "one failure so far");
    assert_eq!(failures(&client, &live.address).1, 0);

    // A second failure reaches `fails`: the dead host is out of rotation...
    assert!(client.has(&tag("app:1")).await.unwrap());
    assert_eq!(failures(&client, &dead), (false, 2));
    // ...so later calls go to the live host first and the dead one is not tried again.
    for _ in 0..3 {
        assert_eq!(
            client
                .get(&tag("app:1"))
                .await
                .unwrap()
                .unwrap()
                .to_string(),
            DIGEST
        );
    }
    assert_eq!(
        failures(&client, &dead),
        (false, 2),
        "skipped while unhealthy"
    );
}

#[tokio::test]
async fn an_answer_is_final_even_when_another_host_would_say_otherwise() {
    let f = fixture();
    // The first host does not know the tag; the second does. Build-indexes share their tag
    // storage, so "not found" from a host that answered is the answer: no second opinion.
    let unaware = serve(&f.server_tls, &[]).await;
    let aware = serve(&f.server_tls, &[("app:2", DIGEST)]).await;
    let client = client(&f.client_tls, &[&unaware.address, &aware.address], 3);

    let error = client.resolve(&tag("app:2")).await.unwrap_err();
    assert!(
        matches!(&error, TagClientError::NotFound { tag } if tag == "app:2"),
        "{error:?}"
    );
    assert_eq!(error.code(), Some(Code::NotFound));
    assert_eq!(client.get(&tag("app:2")).await.unwrap(), None);
    assert!(!client.has(&tag("app:2")).await.unwrap());
    // A refusal that is not a network error is final too, and keeps its code (the access
    // table does not let an agent write tags).
    let error = client
        .put(&tag("app:2"), &DIGEST.parse().unwrap(), false)
        .await;
    match error {
        Err(TagClientError::Rejected { host, status }) => {
            assert_eq!(host, unaware.address);
            assert_eq!(status.code(), Code::PermissionDenied);
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert_eq!(failures(&client, &unaware.address), (true, 0));
}

#[tokio::test]
async fn when_no_host_answers_the_error_names_how_many_were_tried_and_the_last_failure() {
    let f = fixture();
    let first = dead_address().await;
    let second = dead_address().await;
    let client = client(&f.client_tls, &[&first, &second], 3);

    let error = client.resolve(&tag("app:3")).await.unwrap_err();
    assert!(error.is_unavailable(), "{error:?}");
    assert_eq!(error.code(), Some(Code::Unavailable));
    match &error {
        TagClientError::Unreachable {
            tried,
            host,
            status,
        } => {
            assert_eq!(*tried, 2);
            assert!(host == &first || host == &second, "{host}");
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert_eq!(failures(&client, &first).1, 1);
    assert_eq!(failures(&client, &second).1, 1);
}

#[tokio::test]
async fn a_host_that_stops_is_replaced_by_the_next_for_the_following_call() {
    let f = fixture();
    let first = serve(&f.server_tls, &[("app:4", DIGEST)]).await;
    let second = serve(&f.server_tls, &[("app:4", DIGEST)]).await;
    let first_address = first.address.clone();
    let client = client(&f.client_tls, &[&first.address, &second.address], 3);
    assert_eq!(
        client.resolve(&tag("app:4")).await.unwrap().to_string(),
        DIGEST
    );
    assert_eq!(failures(&client, &first_address).1, 0);

    first.stop().await;
    // The client's connection to the first host is gone: the call fails there and the second
    // host answers, within the one call.
    let digest = client.resolve(&tag("app:4")).await.unwrap();
    assert_eq!(digest.to_string(), DIGEST);
    assert_eq!(
        failures(&client, &first_address).1,
        1,
        "the call first tried the stopped host and fell over"
    );
}
