//! The `hdfs` backend against an in-test WebHDFS cluster.
//!
//! No real HDFS can run here (it needs a JVM and a Hadoop distribution, neither of which is
//! packaged for this machine), so these tests speak to a faithful in-test implementation of
//! the WebHDFS REST API: separate name node and data node servers, the two-step 307 redirects
//! of OPEN and CREATE (the name node never receives file data), `RemoteException` JSON errors
//! with the real exception names and status codes, RENAME refusing to overwrite, and a standby
//! name node answering `StandbyException` as the passive half of an HA pair does.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use bytesize::ByteSize;
use common::{blob, digest, ns, refusing_addr};
use kraken_backend::{Backend, BackendError, HdfsBackend, UploadSource};
use kraken_config::backend::{HdfsBackendConfig, NamePath};
use serde_json::json;

/// The file system both nodes serve, and what the name nodes saw.
#[derive(Default)]
struct Cluster {
    files: BTreeMap<String, Vec<u8>>,
    users: Vec<String>,
    /// Requests that carried file data to a name node (WebHDFS clients must not).
    data_sent_to_name_node: usize,
    standby_requests: usize,
    data_node: Option<SocketAddr>,
}

type Shared = Arc<Mutex<Cluster>>;
type Params = Query<HashMap<String, String>>;

fn remote_exception(status: StatusCode, exception: &str, message: String) -> Response {
    let java = match exception {
        "FileNotFoundException" => "java.io.FileNotFoundException".to_owned(),
        "StandbyException" => "org.apache.hadoop.ipc.StandbyException".to_owned(),
        other => format!("org.apache.hadoop.{other}"),
    };
    let body = json!({"RemoteException": {
        "exception": exception, "javaClassName": java, "message": message,
    }});
    (status, axum::Json(body)).into_response()
}

fn not_found(path: &str) -> Response {
    remote_exception(
        StatusCode::NOT_FOUND,
        "FileNotFoundException",
        format!("File does not exist: {path}"),
    )
}

fn redirect(location: String) -> Response {
    (
        StatusCode::TEMPORARY_REDIRECT,
        [
            (header::LOCATION, location),
            (header::CONTENT_LENGTH, "0".to_owned()),
        ],
    )
        .into_response()
}

fn status_json(suffix: &str, kind: &str, length: usize) -> serde_json::Value {
    json!({
        "pathSuffix": suffix, "type": kind, "length": length, "owner": "kraken",
        "group": "supergroup", "permission": "644", "replication": 3,
        "blockSize": 134217728, "modificationTime": 0, "accessTime": 0,
        "childrenNum": 0, "fileId": 16386, "storagePolicy": 0,
    })
}

fn is_dir(files: &BTreeMap<String, Vec<u8>>, path: &str) -> bool {
    let prefix = format!("{}/", path.trim_end_matches('/'));
    path == "/" || files.keys().any(|name| name.starts_with(&prefix))
}

async fn name_node(
    State(cluster): State<Shared>,
    method: Method,
    path: Option<Path<String>>,
    Query(params): Params,
    body: Bytes,
) -> Response {
    let path = format!("/{}", path.map(|Path(p)| p).unwrap_or_default());
    let op = params.get("op").cloned().unwrap_or_default();
    let mut cluster = cluster.lock().unwrap();
    if let Some(user) = params.get("user.name") {
        cluster.users.push(user.clone());
    }
    if !body.is_empty() {
        cluster.data_sent_to_name_node += 1;
    }
    let data_node = cluster.data_node.unwrap();
    match (method, op.as_str()) {
        (Method::GET, "GETFILESTATUS") => match cluster.files.get(&path) {
            Some(data) => axum::Json(json!({"FileStatus": status_json("", "FILE", data.len())}))
                .into_response(),
            None if is_dir(&cluster.files, &path) => {
                axum::Json(json!({"FileStatus": status_json("", "DIRECTORY", 0)})).into_response()
            }
            None => not_found(&path),
        },
        (Method::GET, "LISTSTATUS") => {
            if cluster.files.contains_key(&path) {
                let name = path.rsplit('/').next().unwrap_or_default();
                let length = cluster.files[&path].len();
                return axum::Json(json!({"FileStatuses": {"FileStatus": [
                    status_json(name, "FILE", length)
                ]}}))
                .into_response();
            }
            if !is_dir(&cluster.files, &path) {
                return not_found(&path);
            }
            let prefix = format!("{}/", path.trim_end_matches('/'));
            let mut children: BTreeMap<String, serde_json::Value> = BTreeMap::new();
            for (name, data) in &cluster.files {
                let Some(rest) = name.strip_prefix(&prefix) else {
                    continue;
                };
                let (child, is_file) = match rest.split_once('/') {
                    Some((dir, _)) => (dir.to_owned(), false),
                    None => (rest.to_owned(), true),
                };
                let kind = if is_file { "FILE" } else { "DIRECTORY" };
                let length = if is_file { data.len() } else { 0 };
                children.insert(child.clone(), status_json(&child, kind, length));
            }
            let statuses: Vec<_> = children.into_values().collect();
            axum::Json(json!({"FileStatuses": {"FileStatus": statuses}})).into_response()
        }
        (Method::GET, "OPEN") => {
            if !cluster.files.contains_key(&path) {
                return not_found(&path);
            }
            redirect(format!(
                "http://{data_node}/webhdfs/v1{path}?op=OPEN&namenoderpcaddress=nn:8020&offset=0"
            ))
        }
        (Method::PUT, "CREATE") => {
            let overwrite = params.get("overwrite").is_some_and(|v| v == "true");
            if cluster.files.contains_key(&path) && !overwrite {
                return remote_exception(
                    StatusCode::FORBIDDEN,
                    "FileAlreadyExistsException",
                    format!("{path} already exists"),
                );
            }
            redirect(format!(
                "http://{data_node}/webhdfs/v1{path}?op=CREATE&namenoderpcaddress=nn:8020&createflag=&createparent=true&overwrite={overwrite}"
            ))
        }
        (Method::PUT, "RENAME") => {
            let destination = params.get("destination").cloned().unwrap_or_default();
            let renamed = !cluster.files.contains_key(&destination)
                && match cluster.files.remove(&path) {
                    Some(data) => {
                        cluster.files.insert(destination, data);
                        true
                    }
                    None => false,
                };
            axum::Json(json!({"boolean": renamed})).into_response()
        }
        (Method::DELETE, "DELETE") => {
            let deleted = cluster.files.remove(&path).is_some();
            axum::Json(json!({"boolean": deleted})).into_response()
        }
        (method, op) => remote_exception(
            StatusCode::BAD_REQUEST,
            "IllegalArgumentException",
            format!("Invalid value for webhdfs parameter \"op\": {method} {op}"),
        ),
    }
}

async fn data_node(
    State(cluster): State<Shared>,
    method: Method,
    Path(path): Path<String>,
    Query(params): Params,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/{path}");
    let op = params.get("op").cloned().unwrap_or_default();
    let mut cluster = cluster.lock().unwrap();
    match (method, op.as_str()) {
        (Method::PUT, "CREATE") => {
            // A data node checks the announced length against what arrived.
            let announced: Option<usize> = headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            if announced.is_some_and(|n| n != body.len()) {
                return StatusCode::BAD_REQUEST.into_response();
            }
            cluster.files.insert(path.clone(), body.to_vec());
            (
                StatusCode::CREATED,
                [(header::LOCATION, format!("hdfs://nn:8020{path}"))],
            )
                .into_response()
        }
        (Method::GET, "OPEN") => match cluster.files.get(&path) {
            Some(data) => (
                [(header::CONTENT_TYPE, "application/octet-stream")],
                data.clone(),
            )
                .into_response(),
            None => not_found(&path),
        },
        _ => StatusCode::BAD_REQUEST.into_response(),
    }
}

async fn standby_node(State(cluster): State<Shared>) -> Response {
    cluster.lock().unwrap().standby_requests += 1;
    remote_exception(
        StatusCode::FORBIDDEN,
        "StandbyException",
        "Operation category READ is not supported in state standby".to_owned(),
    )
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// A standby and an active name node (in that order) and a data node.
async fn start_cluster() -> (Shared, Vec<String>) {
    let cluster: Shared = Arc::default();
    let data = serve(
        Router::new()
            .route("/webhdfs/v1/{*path}", any(data_node))
            .layer(axum::extract::DefaultBodyLimit::disable())
            .with_state(cluster.clone()),
    )
    .await;
    cluster.lock().unwrap().data_node = Some(data);
    let active = serve(
        Router::new()
            .route("/webhdfs/v1/{*path}", any(name_node))
            .route("/webhdfs/v1", any(name_node))
            .with_state(cluster.clone()),
    )
    .await;
    let standby = serve(
        Router::new()
            .fallback(standby_node)
            .with_state(cluster.clone()),
    )
    .await;
    (cluster, vec![standby.to_string(), active.to_string()])
}

fn config(name_nodes: Vec<String>) -> HdfsBackendConfig {
    HdfsBackendConfig {
        name_nodes,
        root_directory: "/infra/kraken/".to_owned(),
        name_path: NamePath::ShardedDockerBlob,
        user_name: "kraken".to_owned(),
        buffer_size: ByteSize::mib(1),
    }
}

#[tokio::test]
async fn blobs_round_trip_through_both_webhdfs_steps_with_name_node_failover() {
    let (cluster, name_nodes) = start_cluster().await;
    let backend = HdfsBackend::new(&config(name_nodes)).unwrap();
    let namespace = ns("library/ubuntu");
    let small = blob(1000, 1);
    let large = blob(3 << 20, 2);
    let small_digest = digest(&small);

    assert_eq!(backend.stat(&namespace, &small_digest).await.unwrap(), None);
    // The standby answered once; from then on the active node is asked first.
    assert_eq!(cluster.lock().unwrap().standby_requests, 1);

    let expected = common::contract::round_trip(&backend, &namespace, &[&small, &large]).await;

    let listed = backend.list("").await.unwrap();
    assert_eq!(
        listed.iter().map(|b| b.digest).collect::<Vec<_>>(),
        expected
    );

    let cluster = cluster.lock().unwrap();
    // Exactly the two blobs, at their registry-layout paths: no temporary file is left.
    let mut paths: Vec<_> = cluster.files.keys().cloned().collect();
    let mut wanted: Vec<_> = expected
        .iter()
        .map(|d| {
            let hex = d.hex();
            format!(
                "/infra/kraken/docker/registry/v2/blobs/sha256/{}/{hex}/data",
                &hex[..2]
            )
        })
        .collect();
    paths.sort();
    wanted.sort();
    assert_eq!(paths, wanted);
    assert_eq!(cluster.standby_requests, 1);
    assert_eq!(
        cluster.data_sent_to_name_node, 0,
        "file data goes to the data node only"
    );
    assert!(!cluster.users.is_empty() && cluster.users.iter().all(|u| u == "kraken"));
}

#[tokio::test]
async fn a_missing_blob_is_not_found_and_a_short_source_leaves_nothing() {
    let (cluster, name_nodes) = start_cluster().await;
    let backend = HdfsBackend::new(&config(name_nodes)).unwrap();
    let namespace = ns("team/app");
    let missing = digest(b"never uploaded");
    let error = backend.download(&namespace, &missing).await.unwrap_err();
    assert!(matches!(error, BackendError::NotFound { .. }), "{error}");
    assert!(backend.list("").await.unwrap().is_empty());

    let data = blob(5000, 3);
    let digest = digest(&data);
    let error = backend
        .upload(
            &namespace,
            &digest,
            UploadSource::Reader(Box::pin(std::io::Cursor::new(data))),
            6000,
        )
        .await
        .unwrap_err();
    assert!(error.to_string().contains("CREATE"), "{error}");
    assert_eq!(backend.stat(&namespace, &digest).await.unwrap(), None);
    assert!(
        cluster.lock().unwrap().files.is_empty(),
        "the temporary file was removed"
    );
}

#[tokio::test]
async fn no_reachable_name_node_is_unavailable() {
    let (first, _held_first) = refusing_addr();
    let (second, _held_second) = refusing_addr();
    let backend = HdfsBackend::new(&config(vec![first.to_string(), second.to_string()])).unwrap();
    let error = backend.stat(&ns("a/b"), &digest(b"x")).await.unwrap_err();
    assert!(
        matches!(
            error,
            BackendError::Unavailable {
                backend: "hdfs",
                ..
            }
        ),
        "{error}"
    );
}

#[tokio::test]
async fn keeps_the_backend_contract() {
    let (_cluster, name_nodes) = start_cluster().await;
    let backend = HdfsBackend::new(&config(name_nodes)).unwrap();
    common::contract::writable(&backend, &ns("library/contract"), 100).await;
}
