//! The registry's authentication over HTTPS, as Docker clients meet it: challenges naming the
//! token realm and scope, HTTP basic, the token endpoint, grants per user, and the errors the
//! distribution spec names (`UNAUTHORIZED`, `DENIED`).

// Test code: a failed step is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine;
use kraken_config::Pattern;
use kraken_config::cluster::UpstreamConfig;
use kraken_config::proxy::ProxyConfig;
use kraken_config::registry_auth::{GrantConfig, RegistryAction, RegistryTlsConfig};
use kraken_core::Digest;
use kraken_devcluster::DevCluster;
use kraken_oci::{ErrorBody, ErrorCode};
use kraken_proxy::Proxy;
use kraken_tls::Role;
use reqwest::{Method, StatusCode};
use tokio::net::TcpListener;

struct Fixture {
    cluster: DevCluster,
    proxy: Proxy,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

const ALICE: (&str, &str) = ("alice", "alice-secret");
const BOB: (&str, &str) = ("bob", "bob-secret");

impl Fixture {
    /// A proxy on HTTPS with alice (pull and push everywhere) and bob (pull only).
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cluster = DevCluster::builder(dir.path().join("cluster"))
            .origins(1)
            .agents(0)
            .max_replica(1)
            .start()
            .await
            .unwrap();
        let mut config = ProxyConfig {
            origin: UpstreamConfig::of([cluster.origins[0].grpc_addr().to_string()]),
            build_index: UpstreamConfig::of([cluster.build_index_addr().to_string()]),
            ..ProxyConfig::default()
        };
        config.hashring.max_replica = 1;
        config.store.dir = dir.path().join("proxy");
        for (user, password) in [ALICE, BOB] {
            // The lowest cost keeps the test quick; the proxy accepts any bcrypt cost.
            config
                .auth
                .users
                .insert(user.into(), bcrypt::hash(password, 4).unwrap());
        }
        config.auth.grants = vec![
            GrantConfig {
                users: vec!["alice".into()],
                repositories: Pattern::any(),
                actions: vec![RegistryAction::Pull, RegistryAction::Push],
            },
            GrantConfig {
                users: vec!["*".into()],
                repositories: Pattern::any(),
                actions: vec![RegistryAction::Pull],
            },
        ];
        let pki = cluster.dir.join("pki");
        config.registry_tls = RegistryTlsConfig {
            cert: Some(pki.join("proxy.pem")),
            key: Some(pki.join("proxy.key")),
        };
        let proxy = Proxy::start(
            config,
            cluster.tls(Role::Proxy).unwrap(),
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
        )
        .await
        .unwrap();
        let ca = std::fs::read(pki.join("ca.pem")).unwrap();
        let http = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .build()
            .unwrap();
        Self {
            cluster,
            proxy,
            http,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!(
            "https://localhost:{}{path}",
            self.proxy.registry_addr().port()
        )
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path))
    }

    async fn token(&self, user: Option<(&str, &str)>, scope: &str) -> String {
        let mut request = self.request(
            Method::GET,
            &format!("/auth/token?service=kraken-proxy&scope={scope}"),
        );
        if let Some((user, password)) = user {
            request = request.basic_auth(user, Some(password));
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body: serde_json::Value =
            serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        body["token"].as_str().unwrap().to_owned()
    }

    async fn stop(self) {
        self.proxy.shutdown().await.unwrap();
        self.cluster.shutdown().await;
    }
}

async fn error_code(response: reqwest::Response) -> String {
    let body: ErrorBody = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    body.errors[0].code.clone()
}

fn challenge(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("www-authenticate")
        .expect("a 401 carries a challenge")
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_pushes_are_challenged_and_logins_are_checked() {
    let f = Fixture::start().await;
    let port = f.proxy.registry_addr().port();

    // The version check needs credentials, so `docker login` really verifies the password.
    let response = f.request(Method::GET, "/v2/").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        challenge(&response),
        format!("Bearer realm=\"https://localhost:{port}/auth/token\",service=\"kraken-proxy\"")
    );
    assert_eq!(error_code(response).await, ErrorCode::Unauthorized.as_str());

    // An anonymous push is told where to get a token, and for which scope.
    let response = f
        .request(Method::POST, "/v2/team/app/blobs/uploads/")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(
        challenge(&response).contains("scope=\"repository:team/app:pull,push\""),
        "{}",
        challenge(&response)
    );

    // A wrong password is refused; the right one passes.
    let response = f
        .request(Method::GET, "/v2/")
        .basic_auth("alice", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(response).await, ErrorCode::Unauthorized.as_str());
    let response = f
        .request(Method::GET, "/v2/")
        .basic_auth(ALICE.0, Some(ALICE.1))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // A token that was not issued here is refused.
    let response = f
        .request(Method::GET, "/v2/")
        .bearer_auth("eyJhbGciOiJIUzI1NiJ9.e30.ZRrHA1JJJW8opsbCGfG_HACGpVUMN_a9IV7pAx_Zmeo")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_carry_what_each_user_may_do() {
    let f = Fixture::start().await;
    let data = b"a layer pushed with a token".to_vec();
    let digest = Digest::of(&data);
    let push = |token: String| {
        f.request(
            Method::POST,
            &format!("/v2/team/app/blobs/uploads/?digest={digest}"),
        )
        .bearer_auth(token)
        .body(data.clone())
        .send()
    };

    // Alice gets pull and push, and pushes.
    let token = f.token(Some(ALICE), "repository:team/app:pull,push").await;
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.split('.').nth(1).unwrap())
        .unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&claims).unwrap();
    assert_eq!(claims["sub"], "alice");
    assert_eq!(
        claims["access"][0]["actions"],
        serde_json::json!(["pull", "push"])
    );
    let response = push(token).await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::CREATED,
        "{:?}",
        response.text().await
    );

    // Bob asks for push too but only gets pull; pushing with it, or with his password, is
    // denied outright (no new challenge: no token would let him).
    let token = f.token(Some(BOB), "repository:team/app:pull,push").await;
    let response = push(token.clone()).await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(error_code(response).await, ErrorCode::Denied.as_str());
    let response = f
        .request(Method::POST, "/v2/team/app/blobs/uploads/")
        .basic_auth(BOB.0, Some(BOB.1))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(error_code(response).await, ErrorCode::Denied.as_str());

    // Bob's token pulls what Alice pushed; so may anyone (anonymous pull is on).
    let response = f
        .request(Method::GET, &format!("/v2/team/app/blobs/{digest}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.bytes().await.unwrap(), data);
    let response = f
        .request(Method::GET, &format!("/v2/team/app/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // A token for one repository does not cover another: a new challenge names the scope.
    let token = f.token(Some(ALICE), "repository:team/app:pull,push").await;
    let response = f
        .request(Method::POST, "/v2/team/other/blobs/uploads/")
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let challenge = challenge(&response);
    assert!(
        challenge.contains("repository:team/other:pull,push"),
        "{challenge}"
    );
    assert!(
        challenge.contains("error=\"insufficient_scope\""),
        "{challenge}"
    );

    // The OAuth2 form (POST) works as well.
    let response = f
        .request(Method::POST, "/auth/token")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "grant_type=password&service=kraken-proxy&scope=repository%3Ateam%2Fapp%3Apull\
             &username={}&password={}",
            ALICE.0, ALICE.1
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: serde_json::Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert!(body["access_token"].as_str().is_some_and(|t| t.len() > 40));
    f.stop().await;
}
