//! The successful responses both registries give: the API version check, blobs (whole or one
//! range), manifests, tag lists and the catalog with RFC 5988 `Link` pagination. Errors are
//! [`RegistryError`](crate::RegistryError)s.
//!
//! Header values here are built from validated names, digests, media types and numbers; a value
//! that still is not a valid header (a bug) drops that header rather than fail the response.

use std::fmt;

use axum::body::Body;
use axum::response::Response;
use http::StatusCode;
use http::header::{
    ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, HeaderMap, HeaderName,
    HeaderValue, LINK,
};
use kraken_core::Digest;

use crate::headers::{API_VERSION, DOCKER_CONTENT_DIGEST, DOCKER_DISTRIBUTION_API_VERSION};
use crate::range::ByteSpan;
use crate::route::{Route, encode_query_value};

const JSON: &str = "application/json";
const OCTET_STREAM: &str = "application/octet-stream";

/// Sets `Docker-Distribution-Api-Version: registry/2.0`, which every response carries.
pub fn set_api_version(headers: &mut HeaderMap) {
    headers.insert(
        DOCKER_DISTRIBUTION_API_VERSION,
        HeaderValue::from_static(API_VERSION),
    );
}

/// A response with `status`, `headers` and `body`. Invalid header values are dropped.
pub fn with_headers(
    status: StatusCode,
    headers: impl IntoIterator<Item = (HeaderName, String)>,
    body: Body,
) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let map = response.headers_mut();
    for (name, value) in headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            map.insert(name, value);
        }
    }
    response
}

/// A JSON body with `Content-Type: application/json`.
pub fn json(status: StatusCode, body: &serde_json::Value) -> Response {
    with_headers(
        status,
        [(CONTENT_TYPE, JSON.to_owned())],
        Body::from(body.to_string()),
    )
}

/// `GET /v2/`: `200 {}`, which tells a client it speaks to a v2 registry.
pub fn api_base() -> Response {
    json(StatusCode::OK, &serde_json::json!({}))
}

/// The RFC 5988 `Link` to a listing's next page:
/// `</v2/<name>/tags/list?n=<n>&last=<last>>; rel="next"` (or `/v2/_catalog?…`). `last` is
/// percent-encoded where it has to be, so it comes back intact as the next request's `last`.
pub fn next_link(listing: &Route<'_>, n: impl fmt::Display, last: &str) -> String {
    format!(
        "<{listing}?n={n}&last={}>; rel=\"next\"",
        encode_query_value(last)
    )
}

/// `GET /v2/<name>/tags/list`: `{"name", "tags"}`, with a `Link` to the next page if any
/// (from [`next_link`]).
pub fn tag_list(name: &str, tags: &[String], next: Option<String>) -> Response {
    let body = serde_json::json!({ "name": name, "tags": tags });
    listing(&body, next)
}

/// `GET /v2/_catalog`: `{"repositories"}`, with a `Link` to the next page if any.
pub fn catalog(repositories: &[String], next: Option<String>) -> Response {
    let body = serde_json::json!({ "repositories": repositories });
    listing(&body, next)
}

fn listing(body: &serde_json::Value, next: Option<String>) -> Response {
    let mut response = json(StatusCode::OK, body);
    if let Some(link) = next.and_then(|link| HeaderValue::from_str(&link).ok()) {
        response.headers_mut().insert(LINK, link);
    }
    response
}

/// The headers of a blob `GET` or `HEAD`: `200` with the whole blob, or `206` with one span
/// and its `Content-Range`.
#[derive(Debug, Clone, Copy)]
pub struct BlobResponse<'a> {
    digest: &'a Digest,
    size: u64,
    span: Option<ByteSpan>,
    etag: bool,
}

impl<'a> BlobResponse<'a> {
    /// The whole blob `digest` of `size` bytes.
    pub fn new(digest: &'a Digest, size: u64) -> Self {
        Self {
            digest,
            size,
            span: None,
            etag: false,
        }
    }

    /// Only `span` of it, as a `206`.
    pub fn span(mut self, span: Option<ByteSpan>) -> Self {
        self.span = span;
        self
    }

    /// Adds `ETag: "<digest>"`.
    pub fn etag(mut self) -> Self {
        self.etag = true;
        self
    }

    pub fn status(&self) -> StatusCode {
        match self.span {
            Some(_) => StatusCode::PARTIAL_CONTENT,
            None => StatusCode::OK,
        }
    }

    /// `Docker-Content-Digest`, `Accept-Ranges`, `Content-Type`, `Content-Length` and, for a
    /// span, `Content-Range` (plus `ETag` if asked for).
    pub fn headers(&self) -> Vec<(HeaderName, String)> {
        let length = self.span.map_or(self.size, |span| span.len());
        let mut headers = vec![
            (DOCKER_CONTENT_DIGEST, self.digest.to_string()),
            (ACCEPT_RANGES, "bytes".to_owned()),
            (CONTENT_TYPE, OCTET_STREAM.to_owned()),
        ];
        if self.etag {
            headers.push((ETAG, format!("\"{}\"", self.digest)));
        }
        if let Some(span) = self.span {
            headers.push((CONTENT_RANGE, span.content_range(self.size)));
        }
        headers.push((CONTENT_LENGTH, length.to_string()));
        headers
    }

    /// The response, with `body` (empty for a `HEAD`).
    pub fn body(&self, body: Body) -> Response {
        with_headers(self.status(), self.headers(), body)
    }
}

/// A manifest `GET` or `HEAD`: `200` with the media type its JSON declares.
#[derive(Debug, Clone, Copy)]
pub struct ManifestResponse<'a> {
    digest: &'a Digest,
    media_type: &'a str,
    etag: bool,
}

impl<'a> ManifestResponse<'a> {
    pub fn new(digest: &'a Digest, media_type: &'a str) -> Self {
        Self {
            digest,
            media_type,
            etag: false,
        }
    }

    /// Adds `ETag: "<digest>"`.
    pub fn etag(mut self) -> Self {
        self.etag = true;
        self
    }

    /// The response for `body`; a `HEAD` (`head`) gets its headers and no body.
    pub fn body(&self, body: bytes::Bytes, head: bool) -> Response {
        let mut headers = vec![
            (CONTENT_TYPE, self.media_type.to_owned()),
            (DOCKER_CONTENT_DIGEST, self.digest.to_string()),
        ];
        if self.etag {
            headers.push((ETAG, format!("\"{}\"", self.digest)));
        }
        headers.push((CONTENT_LENGTH, body.len().to_string()));
        let body = if head {
            Body::empty()
        } else {
            Body::from(body)
        };
        with_headers(StatusCode::OK, headers, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn text(response: Response) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn the_base_answers_an_empty_json_object() {
        let response = api_base();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[CONTENT_TYPE], JSON);
        assert_eq!(text(response).await, "{}");
        let mut headers = HeaderMap::new();
        set_api_version(&mut headers);
        assert_eq!(headers[DOCKER_DISTRIBUTION_API_VERSION], "registry/2.0");
    }

    #[test]
    fn next_links_follow_rfc_5988() {
        assert_eq!(
            next_link(&Route::Catalog, 2, "lib/two"),
            "</v2/_catalog?n=2&last=lib/two>; rel=\"next\""
        );
        assert_eq!(
            next_link(&Route::TagsList { name: "a/b" }, 10, "v1.0"),
            "</v2/a/b/tags/list?n=10&last=v1.0>; rel=\"next\""
        );
        // A token that would break the query or the header is escaped.
        assert_eq!(
            next_link(&Route::Catalog, 1, "a&b c"),
            "</v2/_catalog?n=1&last=a%26b%20c>; rel=\"next\""
        );
    }

    #[tokio::test]
    async fn listings_carry_their_link() {
        let tags = vec!["a".to_owned(), "b".to_owned()];
        let next = next_link(&Route::TagsList { name: "x" }, 2, "b");
        let response = tag_list("x", &tags, Some(next));
        assert_eq!(response.headers()[CONTENT_TYPE], JSON);
        assert_eq!(
            response.headers()[LINK],
            "</v2/x/tags/list?n=2&last=b>; rel=\"next\""
        );
        let body: serde_json::Value = serde_json::from_str(&text(response).await).unwrap();
        assert_eq!(body, serde_json::json!({"name": "x", "tags": ["a", "b"]}));

        let response = catalog(&[], None);
        assert!(response.headers().get(LINK).is_none());
        assert_eq!(text(response).await, r#"{"repositories":[]}"#);
    }

    #[test]
    fn blobs_whole_and_ranged() {
        let digest = Digest::of(b"blob");
        let whole = BlobResponse::new(&digest, 70_000).body(Body::empty());
        assert_eq!(whole.status(), StatusCode::OK);
        let headers = whole.headers();
        assert_eq!(headers[DOCKER_CONTENT_DIGEST], digest.to_string().as_str());
        assert_eq!(headers[ACCEPT_RANGES], "bytes");
        assert_eq!(headers[CONTENT_TYPE], OCTET_STREAM);
        assert_eq!(headers[CONTENT_LENGTH], "70000");
        assert!(headers.get(CONTENT_RANGE).is_none());
        assert!(headers.get(ETAG).is_none());

        let span = ByteSpan::new(100, 199);
        let ranged = BlobResponse::new(&digest, 70_000)
            .span(span)
            .etag()
            .body(Body::empty());
        assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
        let headers = ranged.headers();
        assert_eq!(headers[CONTENT_RANGE], "bytes 100-199/70000");
        assert_eq!(headers[CONTENT_LENGTH], "100");
        assert_eq!(headers[ETAG], format!("\"{digest}\"").as_str());
    }

    #[tokio::test]
    async fn manifests_with_their_media_type() {
        let digest = Digest::of(b"{}");
        let media_type = "application/vnd.oci.image.manifest.v1+json";
        let body = bytes::Bytes::from_static(b"{}");
        let head = ManifestResponse::new(&digest, media_type).body(body.clone(), true);
        assert_eq!(head.headers()[CONTENT_TYPE], media_type);
        assert_eq!(head.headers()[CONTENT_LENGTH], "2");
        assert!(head.headers().get(ETAG).is_none());
        assert_eq!(text(head).await, "");
        let get = ManifestResponse::new(&digest, media_type)
            .etag()
            .body(body, false);
        assert_eq!(get.status(), StatusCode::OK);
        assert_eq!(
            get.headers()[DOCKER_CONTENT_DIGEST],
            digest.to_string().as_str()
        );
        assert_eq!(get.headers()[ETAG], format!("\"{digest}\"").as_str());
        assert_eq!(text(get).await, "{}");
    }
}
