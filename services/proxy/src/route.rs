//! Which registry endpoint a path names. Repository names contain `/`, so the endpoint is told
//! by the path's tail (`…/manifests/<reference>`, `…/blobs/uploads/<id>`, …), as in the
//! distribution spec's grammar; names and references are validated by the handlers.

use std::collections::HashMap;

/// A registry API endpoint with its raw path parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// `/v2/`
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    TagsList { name: String },
    /// `/v2/<name>/manifests/<reference>`
    Manifest { name: String, reference: String },
    /// `/v2/<name>/blobs/<digest>`
    Blob { name: String, digest: String },
    /// `/v2/<name>/blobs/uploads/`
    UploadStart { name: String },
    /// `/v2/<name>/blobs/uploads/<id>`
    Upload { name: String, id: String },
}

impl Route {
    /// A label for logs and metrics.
    pub(crate) fn kind(&self) -> &'static str {
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

/// The endpoint `path` names, `None` for anything else.
pub(crate) fn parse(path: &str) -> Option<Route> {
    let rest = path.strip_prefix("/v2")?;
    if rest.is_empty() || rest == "/" {
        return Some(Route::Base);
    }
    let rest = rest.strip_prefix('/')?;
    if rest == "_catalog" {
        return Some(Route::Catalog);
    }
    let name = |text: &str| (!text.is_empty()).then(|| text.to_owned());
    if let Some(repository) = rest.strip_suffix("/tags/list") {
        return name(repository).map(|name| Route::TagsList { name });
    }
    if let Some(repository) = rest
        .strip_suffix("/blobs/uploads/")
        .or_else(|| rest.strip_suffix("/blobs/uploads"))
    {
        return name(repository).map(|name| Route::UploadStart { name });
    }
    let (head, last) = rest.rsplit_once('/')?;
    if last.is_empty() {
        return None;
    }
    let (repository, kind) = head.rsplit_once('/')?;
    let repository = name(repository)?;
    match kind {
        "manifests" => Some(Route::Manifest {
            name: repository,
            reference: last.to_owned(),
        }),
        "blobs" => Some(Route::Blob {
            name: repository,
            digest: last.to_owned(),
        }),
        "uploads" => {
            let repository = repository.strip_suffix("/blobs")?;
            name(repository).map(|name| Route::Upload {
                name,
                id: last.to_owned(),
            })
        }
        _ => None,
    }
}

/// The query parameters of a URI (the last value wins for a repeated key).
pub(crate) fn query(uri: &http::Uri) -> HashMap<String, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> String {
        text.to_owned()
    }

    #[test]
    fn paths_map_to_endpoints() {
        let cases = [
            ("/v2/", Some(Route::Base)),
            ("/v2", Some(Route::Base)),
            ("/v2/_catalog", Some(Route::Catalog)),
            (
                "/v2/a/b/tags/list",
                Some(Route::TagsList { name: s("a/b") }),
            ),
            (
                "/v2/library/ubuntu/manifests/22.04",
                Some(Route::Manifest {
                    name: s("library/ubuntu"),
                    reference: s("22.04"),
                }),
            ),
            (
                "/v2/x/blobs/sha256:ab",
                Some(Route::Blob {
                    name: s("x"),
                    digest: s("sha256:ab"),
                }),
            ),
            (
                "/v2/a/b/blobs/uploads/",
                Some(Route::UploadStart { name: s("a/b") }),
            ),
            (
                "/v2/a/b/blobs/uploads",
                Some(Route::UploadStart { name: s("a/b") }),
            ),
            (
                "/v2/a/b/blobs/uploads/0123",
                Some(Route::Upload {
                    name: s("a/b"),
                    id: s("0123"),
                }),
            ),
            // A repository may itself end in `blobs` or `manifests`.
            (
                "/v2/team/blobs/manifests/1",
                Some(Route::Manifest {
                    name: s("team/blobs"),
                    reference: s("1"),
                }),
            ),
            ("/v2/blobs/sha256:ab", None),
            ("/v2/a/manifests/", None),
            ("/v2/a/tags/list/x", None),
            ("/v2/a/other/x", None),
            ("/v1/a/blobs/x", None),
            ("/v2x", None),
        ];
        for (path, expected) in cases {
            assert_eq!(parse(path), expected, "{path}");
        }
    }

    #[test]
    fn query_parameters_are_decoded() {
        let uri: http::Uri = "/v2/a/blobs/uploads/?mount=sha256%3Aab&from=lib%2Fx&n=&flag"
            .parse()
            .unwrap();
        let query = query(&uri);
        assert_eq!(query["mount"], "sha256:ab");
        assert_eq!(query["from"], "lib/x");
        assert_eq!(query["n"], "");
        assert_eq!(query["flag"], "");
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("%zz"), "%zz");
        assert_eq!(decode("a+b%20c"), "a b c");
    }
}
