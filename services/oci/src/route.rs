//! Which registry endpoint a path names, and back. Repository names contain `/`, so the endpoint
//! is told by the path's tail (`…/manifests/<reference>`, `…/blobs/uploads/<id>`, …), as in the
//! distribution spec's grammar. Names, references and digests are only split out here, not
//! validated: the handlers parse them with [`parse_repository`](crate::parse_repository),
//! [`Reference`](crate::Reference) and [`kraken_core::Digest`] so each refusal gets its own
//! error code.

use std::collections::HashMap;
use std::fmt;

/// A registry API endpoint with its raw path parameters, borrowed from the path.
///
/// `Display` writes the endpoint's canonical path (`/v2/<name>/blobs/<digest>`, …), the form
/// used in `Location` and `Link` headers; parsing it gives the same route back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// `/v2/`: the API version check.
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    TagsList { name: &'a str },
    /// `/v2/<name>/manifests/<reference>`
    Manifest { name: &'a str, reference: &'a str },
    /// `/v2/<name>/blobs/<digest>`
    Blob { name: &'a str, digest: &'a str },
    /// `/v2/<name>/blobs/uploads/`
    UploadStart { name: &'a str },
    /// `/v2/<name>/blobs/uploads/<id>`
    Upload { name: &'a str, id: &'a str },
}

impl<'a> Route<'a> {
    /// The endpoint a request path (`/v2/…`, not percent-decoded) names, `None` for anything
    /// else.
    pub fn parse(path: &'a str) -> Option<Self> {
        let rest = path.strip_prefix("/v2")?;
        if rest.is_empty() {
            return Some(Self::Base);
        }
        Self::parse_tail(rest.strip_prefix('/')?)
    }

    /// The endpoint named by the part of a path after `/v2/` (what a `/v2/{*rest}` router
    /// pattern captures), `None` for anything else.
    pub fn parse_tail(rest: &'a str) -> Option<Self> {
        if rest.is_empty() {
            return Some(Self::Base);
        }
        if rest == "_catalog" {
            return Some(Self::Catalog);
        }
        let non_empty = |text: &'a str| (!text.is_empty()).then_some(text);
        if let Some(name) = rest.strip_suffix("/tags/list") {
            return non_empty(name).map(|name| Self::TagsList { name });
        }
        if let Some(name) = rest
            .strip_suffix("/blobs/uploads/")
            .or_else(|| rest.strip_suffix("/blobs/uploads"))
        {
            return non_empty(name).map(|name| Self::UploadStart { name });
        }
        let (head, last) = rest.rsplit_once('/')?;
        let last = non_empty(last)?;
        let (name, kind) = head.rsplit_once('/')?;
        let name = non_empty(name)?;
        match kind {
            "manifests" => Some(Self::Manifest {
                name,
                reference: last,
            }),
            "blobs" => Some(Self::Blob { name, digest: last }),
            "uploads" => {
                let name = non_empty(name.strip_suffix("/blobs")?)?;
                Some(Self::Upload { name, id: last })
            }
            _ => None,
        }
    }

    /// A label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Base => "base",
            Self::Catalog => "catalog",
            Self::TagsList { .. } => "tags",
            Self::Manifest { .. } => "manifest",
            Self::Blob { .. } => "blob",
            Self::UploadStart { .. } | Self::Upload { .. } => "upload",
        }
    }
}

impl fmt::Display for Route<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Base => f.write_str("/v2/"),
            Self::Catalog => f.write_str("/v2/_catalog"),
            Self::TagsList { name } => write!(f, "/v2/{name}/tags/list"),
            Self::Manifest { name, reference } => write!(f, "/v2/{name}/manifests/{reference}"),
            Self::Blob { name, digest } => write!(f, "/v2/{name}/blobs/{digest}"),
            Self::UploadStart { name } => write!(f, "/v2/{name}/blobs/uploads/"),
            Self::Upload { name, id } => write!(f, "/v2/{name}/blobs/uploads/{id}"),
        }
    }
}

/// The query parameters of a URI, percent-decoded (the last value wins for a repeated key).
pub fn query_params(uri: &http::Uri) -> HashMap<String, String> {
    uri.query()
        .map(|query| {
            query
                .split('&')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                    (decode(key), decode(value))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Percent-decoding of a query component (`+` is a space, as in forms). Malformed escapes
/// are kept as they are.
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escaped = match (bytes[index], bytes.get(index + 1), bytes.get(index + 2)) {
            (b'%', Some(&high), Some(&low)) => hex_value(high).zip(hex_value(low)),
            _ => None,
        };
        match (escaped, bytes[index]) {
            (Some((high, low)), _) => {
                out.push(high << 4 | low);
                index += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                index += 1;
            }
            (None, byte) => {
                out.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_value(byte: u8) -> Option<u8> {
    (byte as char).to_digit(16).map(|value| value as u8)
}

/// Percent-encodes a query value so that [`query_params`] gives it back: everything but
/// unreserved characters and `/`, `:` and `@` (which a query may hold as they are) is escaped.
pub(crate) fn encode_query_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~/:@".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_endpoints() {
        let cases = [
            ("/v2/", Some(Route::Base)),
            ("/v2", Some(Route::Base)),
            ("/v2/_catalog", Some(Route::Catalog)),
            ("/v2/a/b/tags/list", Some(Route::TagsList { name: "a/b" })),
            (
                "/v2/library/ubuntu/manifests/22.04",
                Some(Route::Manifest {
                    name: "library/ubuntu",
                    reference: "22.04",
                }),
            ),
            (
                "/v2/x/blobs/sha256:ab",
                Some(Route::Blob {
                    name: "x",
                    digest: "sha256:ab",
                }),
            ),
            (
                "/v2/a/b/blobs/uploads/",
                Some(Route::UploadStart { name: "a/b" }),
            ),
            (
                "/v2/a/b/blobs/uploads",
                Some(Route::UploadStart { name: "a/b" }),
            ),
            (
                "/v2/a/b/blobs/uploads/0123",
                Some(Route::Upload {
                    name: "a/b",
                    id: "0123",
                }),
            ),
            // A repository may itself end in, or contain, `blobs` or `manifests`.
            (
                "/v2/team/blobs/manifests/1",
                Some(Route::Manifest {
                    name: "team/blobs",
                    reference: "1",
                }),
            ),
            (
                "/v2/team/blobs/app/blobs/sha256:ab",
                Some(Route::Blob {
                    name: "team/blobs/app",
                    digest: "sha256:ab",
                }),
            ),
            (
                "/v2/manifests/manifests/latest",
                Some(Route::Manifest {
                    name: "manifests",
                    reference: "latest",
                }),
            ),
            ("/v2/blobs/sha256:ab", None),
            ("/v2/a/manifests/", None),
            ("/v2/a/tags/list/x", None),
            ("/v2/a/other/x", None),
            ("/v2/a/manifests/b/c", None),
            ("/v2/tags/list", None),
            ("/v2/blobs/uploads/", None),
            ("/v2/blobs/uploads/x", None),
            ("/v2//blobs/uploads/x", None),
            ("/v2/_catalog/x", None),
            ("/v1/a/blobs/x", None),
            ("/v2x", None),
            ("", None),
            ("/", None),
        ];
        for (path, expected) in cases {
            assert_eq!(Route::parse(path), expected, "{path}");
        }
    }

    #[test]
    fn the_tail_after_v2_parses_like_the_full_path() {
        for tail in [
            "",
            "_catalog",
            "a/b/tags/list",
            "a/manifests/latest",
            "team/blobs/app/blobs/sha256:ab",
            "a/blobs/uploads/",
            "a/blobs/uploads/id",
            "a/other/x",
        ] {
            assert_eq!(
                Route::parse_tail(tail),
                Route::parse(&format!("/v2/{tail}")),
                "{tail}"
            );
        }
    }

    #[test]
    fn routes_print_their_canonical_path_and_parse_back() {
        let routes = [
            Route::Base,
            Route::Catalog,
            Route::TagsList { name: "a/b" },
            Route::Manifest {
                name: "lib/x",
                reference: "sha256:ab",
            },
            Route::Blob {
                name: "team/blobs",
                digest: "sha256:ab",
            },
            Route::UploadStart { name: "a" },
            Route::Upload {
                name: "a/b",
                id: "0123",
            },
        ];
        for route in routes {
            let path = route.to_string();
            assert!(path.starts_with("/v2/"), "{path}");
            assert_eq!(Route::parse(&path), Some(route), "{path}");
        }
        assert_eq!(
            Route::Upload { name: "a", id: "1" }.to_string(),
            "/v2/a/blobs/uploads/1"
        );
        assert_eq!(Route::UploadStart { name: "a" }.kind(), "upload");
        assert_eq!(Route::TagsList { name: "a" }.kind(), "tags");
    }

    #[test]
    fn query_parameters_are_decoded() {
        let uri: http::Uri = "/v2/a/blobs/uploads/?mount=sha256%3Aab&from=lib%2Fx&n=&flag"
            .parse()
            .unwrap();
        let query = query_params(&uri);
        assert_eq!(query["mount"], "sha256:ab");
        assert_eq!(query["from"], "lib/x");
        assert_eq!(query["n"], "");
        assert_eq!(query["flag"], "");
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("%zz"), "%zz");
        assert_eq!(decode("a+b%20c"), "a b c");
        let uri: http::Uri = "/v2/x?n=1&n=2".parse().unwrap();
        assert_eq!(query_params(&uri)["n"], "2");
        let uri: http::Uri = "/v2/x".parse().unwrap();
        assert!(query_params(&uri).is_empty());
    }

    #[test]
    fn encoded_query_values_decode_to_themselves() {
        assert_eq!(encode_query_value("lib/two:v1.0_x~@"), "lib/two:v1.0_x~@");
        for text in ["a&b=c", "a+b c", "100%", "é<>#\"\n"] {
            let encoded = encode_query_value(text);
            assert!(http::HeaderValue::from_str(&encoded).is_ok(), "{encoded}");
            let uri: http::Uri = format!("/v2/x?last={encoded}").parse().unwrap();
            assert_eq!(query_params(&uri)["last"], text);
        }
    }
}
