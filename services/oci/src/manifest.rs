//! Manifests: image manifests (Docker schema 2, OCI) and indexes (Docker manifest lists, OCI
//! indexes), parsed and validated from a body and its `Content-Type`.
//!
//! Validation is strict about what a registry relies on (schema version, media type, every
//! descriptor's digest and size) and lenient about the rest: unknown fields are ignored, as the
//! specs require, and an empty `mediaType` counts as absent (quay.io serves such manifests,
//! which broke Kraken, uber/kraken#288).

use std::collections::BTreeMap;

use kraken_core::{Digest, DigestError};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::RegistryError;
use crate::media_type;

/// The largest manifest accepted (the limit Docker's distribution registry applies).
pub const MAX_MANIFEST_SIZE: usize = 4 << 20;

/// The four manifest media types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ManifestKind {
    DockerManifest,
    DockerManifestList,
    OciManifest,
    OciIndex,
}

impl ManifestKind {
    pub fn from_media_type(media_type: &str) -> Option<Self> {
        match media_type {
            media_type::DOCKER_MANIFEST => Some(Self::DockerManifest),
            media_type::DOCKER_MANIFEST_LIST => Some(Self::DockerManifestList),
            media_type::OCI_MANIFEST => Some(Self::OciManifest),
            media_type::OCI_INDEX => Some(Self::OciIndex),
            _ => None,
        }
    }

    pub const fn media_type(self) -> &'static str {
        match self {
            Self::DockerManifest => media_type::DOCKER_MANIFEST,
            Self::DockerManifestList => media_type::DOCKER_MANIFEST_LIST,
            Self::OciManifest => media_type::OCI_MANIFEST,
            Self::OciIndex => media_type::OCI_INDEX,
        }
    }

    /// Whether manifests of this kind list other manifests (a manifest list or an index).
    pub const fn is_index(self) -> bool {
        matches!(self, Self::DockerManifestList | Self::OciIndex)
    }
}

/// The platform of an index entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(rename = "os.version", skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
}

/// A reference to content: media type, digest and size, plus the optional fields a registry
/// may look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    /// Where a foreign layer can be fetched from (never from this registry).
    pub urls: Vec<String>,
    pub annotations: BTreeMap<String, String>,
    /// Set on index entries.
    pub platform: Option<Platform>,
    pub artifact_type: Option<String>,
}

impl Descriptor {
    /// A Docker foreign or OCI non-distributable layer: never pushed, so never required.
    pub fn is_foreign(&self) -> bool {
        media_type::is_foreign_layer(&self.media_type)
    }
}

/// An image manifest (Docker schema 2 or OCI): a config and layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageManifest {
    pub kind: ManifestKind,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    /// OCI 1.1: the manifest this one is about (signatures, SBOMs). Not a dependency: the
    /// spec lets registries accept a manifest whose subject they do not hold.
    pub subject: Option<Descriptor>,
    pub artifact_type: Option<String>,
    pub annotations: BTreeMap<String, String>,
}

/// An index (Docker manifest list or OCI index): other manifests, usually one per platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageIndex {
    pub kind: ManifestKind,
    pub manifests: Vec<Descriptor>,
    pub subject: Option<Descriptor>,
    pub artifact_type: Option<String>,
    pub annotations: BTreeMap<String, String>,
}

/// A validated manifest.
// One is parsed per request and never stored in bulk: boxing a variant to shave a few hundred
// bytes would only make matching on it clumsier.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manifest {
    Image(ImageManifest),
    Index(ImageIndex),
}

/// Why a body is not an acceptable manifest (maps to `MANIFEST_INVALID`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("the manifest is {size} bytes; the limit is {max}")]
    TooLarge { size: usize, max: usize },
    #[error(
        "media type {0:?} is not supported: push a Docker schema 2 manifest or manifest list, or \
         an OCI image manifest or index"
    )]
    UnsupportedMediaType(String),
    #[error("the manifest is not valid JSON: {0}")]
    NotJson(String),
    #[error("the manifest is not a JSON object")]
    NotAnObject,
    #[error("the manifest has no `{0}`")]
    MissingField(String),
    #[error("`{field}` must be {expected}")]
    WrongType {
        field: String,
        expected: &'static str,
    },
    #[error("schemaVersion is {0}; only schema version 2 is supported")]
    SchemaVersion(String),
    #[error("the Content-Type is {header:?} but the manifest's mediaType is {body:?}")]
    MediaTypeMismatch { header: String, body: String },
    #[error(
        "cannot tell the manifest's type: no Content-Type, no mediaType, and neither `config` \
         nor `manifests`"
    )]
    UnknownKind,
    #[error("`{field}` is not a valid digest: {source}")]
    InvalidDigest {
        field: String,
        #[source]
        source: DigestError,
    },
}

impl From<ManifestError> for RegistryError {
    fn from(error: ManifestError) -> Self {
        let too_large = matches!(error, ManifestError::TooLarge { .. });
        let registry = RegistryError::manifest_invalid(error.to_string());
        if too_large {
            registry.with_status(http::StatusCode::PAYLOAD_TOO_LARGE)
        } else {
            registry
        }
    }
}

impl Manifest {
    /// Parses and validates `body`. `content_type` is the request's `Content-Type` (`None`, or a
    /// generic `application/json`, when unknown: the type then comes from the body's
    /// `mediaType`, or from its shape as for OCI manifests that omit it). When both the header
    /// and the body name a type, they must agree.
    pub fn parse(content_type: Option<&str>, body: &[u8]) -> Result<Self, ManifestError> {
        if body.len() > MAX_MANIFEST_SIZE {
            return Err(ManifestError::TooLarge {
                size: body.len(),
                max: MAX_MANIFEST_SIZE,
            });
        }
        let header = content_type.map(media_type::essence).filter(|essence| {
            !matches!(
                essence.as_str(),
                "" | "application/json" | "application/octet-stream"
            )
        });
        let header_kind = match &header {
            None => None,
            Some(essence) => Some(
                ManifestKind::from_media_type(essence)
                    .ok_or_else(|| ManifestError::UnsupportedMediaType(essence.clone()))?,
            ),
        };
        let value: Value = serde_json::from_slice(body)
            .map_err(|error| ManifestError::NotJson(error.to_string()))?;
        let Value::Object(object) = value else {
            return Err(ManifestError::NotAnObject);
        };
        match object.get("schemaVersion") {
            None => return Err(ManifestError::MissingField("schemaVersion".into())),
            Some(version) if version.as_u64() == Some(2) => {}
            Some(version) => return Err(ManifestError::SchemaVersion(version.to_string())),
        }
        let body_type =
            optional_string(&object, "mediaType", "mediaType")?.filter(|t| !t.is_empty());
        let kind = match (header_kind, &body_type) {
            (Some(kind), Some(body_type)) if kind.media_type() != body_type => {
                return Err(ManifestError::MediaTypeMismatch {
                    header: kind.media_type().to_owned(),
                    body: body_type.clone(),
                });
            }
            (Some(kind), _) => kind,
            (None, Some(body_type)) => ManifestKind::from_media_type(body_type)
                .ok_or_else(|| ManifestError::UnsupportedMediaType(body_type.clone()))?,
            (None, None) if object.contains_key("manifests") => ManifestKind::OciIndex,
            (None, None) if object.contains_key("config") => ManifestKind::OciManifest,
            (None, None) => return Err(ManifestError::UnknownKind),
        };
        let subject = match object.get("subject") {
            None | Some(Value::Null) => None,
            Some(value) => Some(descriptor(value, "subject")?),
        };
        let artifact_type = optional_string(&object, "artifactType", "artifactType")?;
        let annotations = annotations(&object, "annotations")?;
        if kind.is_index() {
            let manifests = descriptors(&object, "manifests")?;
            Ok(Self::Index(ImageIndex {
                kind,
                manifests,
                subject,
                artifact_type,
                annotations,
            }))
        } else {
            let config = object
                .get("config")
                .ok_or_else(|| ManifestError::MissingField("config".into()))?;
            let config = descriptor(config, "config")?;
            let layers = descriptors(&object, "layers")?;
            Ok(Self::Image(ImageManifest {
                kind,
                config,
                layers,
                subject,
                artifact_type,
                annotations,
            }))
        }
    }

    pub fn kind(&self) -> ManifestKind {
        match self {
            Self::Image(image) => image.kind,
            Self::Index(index) => index.kind,
        }
    }

    /// The media type to serve the manifest with (`Content-Type`).
    pub fn media_type(&self) -> &'static str {
        self.kind().media_type()
    }

    pub fn is_index(&self) -> bool {
        matches!(self, Self::Index(_))
    }

    /// Every descriptor the manifest lists (config first, then layers; or the child
    /// manifests), foreign layers included, the subject not.
    pub fn descriptors(&self) -> Vec<&Descriptor> {
        match self {
            Self::Image(image) => std::iter::once(&image.config)
                .chain(image.layers.iter())
                .collect(),
            Self::Index(index) => index.manifests.iter().collect(),
        }
    }

    /// The digests a registry must hold for this manifest to be complete: the config and the
    /// layers of an image manifest, or the child manifests of an index (whose own references
    /// the caller resolves by fetching them). Foreign layers are left out (they are never
    /// pushed), and so is the `subject`. In order, without duplicates.
    pub fn references(&self) -> Vec<Digest> {
        let mut seen = Vec::new();
        for descriptor in self.descriptors() {
            if !descriptor.is_foreign() && !seen.contains(&descriptor.digest) {
                seen.push(descriptor.digest);
            }
        }
        seen
    }

    pub fn subject(&self) -> Option<&Descriptor> {
        match self {
            Self::Image(image) => image.subject.as_ref(),
            Self::Index(index) => index.subject.as_ref(),
        }
    }
}

fn descriptors(object: &Map<String, Value>, field: &str) -> Result<Vec<Descriptor>, ManifestError> {
    let Some(value) = object.get(field) else {
        return Err(ManifestError::MissingField(field.to_owned()));
    };
    let Value::Array(items) = value else {
        return Err(wrong_type(field, "an array of descriptors"));
    };
    items
        .iter()
        .enumerate()
        .map(|(index, item)| descriptor(item, &format!("{field}[{index}]")))
        .collect()
}

fn descriptor(value: &Value, path: &str) -> Result<Descriptor, ManifestError> {
    let Value::Object(object) = value else {
        return Err(wrong_type(path, "a descriptor object"));
    };
    let field = |name: &str| format!("{path}.{name}");
    let media_type = optional_string(object, "mediaType", &field("mediaType"))?
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ManifestError::MissingField(field("mediaType")))?;
    let digest = optional_string(object, "digest", &field("digest"))?
        .ok_or_else(|| ManifestError::MissingField(field("digest")))?;
    let digest = digest
        .parse::<Digest>()
        .map_err(|source| ManifestError::InvalidDigest {
            field: field("digest"),
            source,
        })?;
    let size = match object.get("size") {
        None => return Err(ManifestError::MissingField(field("size"))),
        Some(size) => size
            .as_u64()
            .ok_or_else(|| wrong_type(&field("size"), "a non-negative integer"))?,
    };
    let urls = match object.get("urls") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(urls)) => urls
            .iter()
            .map(|url| url.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| wrong_type(&field("urls"), "an array of strings"))?,
        Some(_) => return Err(wrong_type(&field("urls"), "an array of strings")),
    };
    let platform = match object.get("platform") {
        None | Some(Value::Null) => None,
        Some(Value::Object(platform)) => {
            let path = field("platform");
            let sub = |name: &str| format!("{path}.{name}");
            Some(Platform {
                architecture: optional_string(platform, "architecture", &sub("architecture"))?
                    .ok_or_else(|| ManifestError::MissingField(sub("architecture")))?,
                os: optional_string(platform, "os", &sub("os"))?
                    .ok_or_else(|| ManifestError::MissingField(sub("os")))?,
                variant: optional_string(platform, "variant", &sub("variant"))?,
                os_version: optional_string(platform, "os.version", &sub("os.version"))?,
            })
        }
        Some(_) => return Err(wrong_type(&field("platform"), "an object")),
    };
    Ok(Descriptor {
        media_type,
        digest,
        size,
        urls,
        annotations: annotations(object, &field("annotations"))?,
        platform,
        artifact_type: optional_string(object, "artifactType", &field("artifactType"))?,
    })
}

fn optional_string(
    object: &Map<String, Value>,
    name: &str,
    path: &str,
) -> Result<Option<String>, ManifestError> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(wrong_type(path, "a string")),
    }
}

fn annotations(
    object: &Map<String, Value>,
    path: &str,
) -> Result<BTreeMap<String, String>, ManifestError> {
    let name = path.rsplit('.').next().unwrap_or(path);
    match object.get(name) {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(key, value)| value.as_str().map(|v| (key.clone(), v.to_owned())))
            .collect::<Option<BTreeMap<_, _>>>()
            .ok_or_else(|| wrong_type(path, "an object of strings")),
        Some(_) => Err(wrong_type(path, "an object of strings")),
    }
}

fn wrong_type(field: &str, expected: &'static str) -> ManifestError {
    ManifestError::WrongType {
        field: field.to_owned(),
        expected,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::ErrorCode;
    use crate::media_type::*;

    fn digest(seed: &str) -> Digest {
        Digest::of(seed.as_bytes())
    }

    fn desc(media_type: &str, seed: &str, size: u64) -> Value {
        json!({"mediaType": media_type, "digest": digest(seed).to_string(), "size": size})
    }

    fn docker_image() -> Value {
        json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": desc(DOCKER_CONFIG, "config", 100),
            "layers": [desc(DOCKER_LAYER, "l1", 10), desc(DOCKER_LAYER, "l2", 20)],
        })
    }

    fn bytes(value: &Value) -> Vec<u8> {
        serde_json::to_vec(value).unwrap()
    }

    #[test]
    fn a_docker_image_manifest_refers_to_its_config_and_layers() {
        let manifest = Manifest::parse(Some(DOCKER_MANIFEST), &bytes(&docker_image())).unwrap();
        assert_eq!(manifest.kind(), ManifestKind::DockerManifest);
        assert_eq!(manifest.media_type(), DOCKER_MANIFEST);
        assert!(!manifest.is_index());
        assert_eq!(
            manifest.references(),
            vec![digest("config"), digest("l1"), digest("l2")]
        );
        let Manifest::Image(image) = &manifest else {
            panic!("not an image")
        };
        assert_eq!(image.layers[1].size, 20);
    }

    #[test]
    fn an_index_refers_to_its_child_manifests() {
        let index = json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": digest("amd64").to_string(), "size": 500,
                 "platform": {"architecture": "amd64", "os": "linux"}},
                {"mediaType": OCI_MANIFEST, "digest": digest("arm64").to_string(), "size": 501,
                 "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
            ],
        });
        let manifest = Manifest::parse(Some(OCI_INDEX), &bytes(&index)).unwrap();
        assert!(manifest.is_index());
        assert_eq!(
            manifest.references(),
            vec![digest("amd64"), digest("arm64")]
        );
        let Manifest::Index(index) = manifest else {
            panic!("not an index")
        };
        let platform = index.manifests[1].platform.as_ref().unwrap();
        assert_eq!(platform.variant.as_deref(), Some("v8"));
    }

    #[test]
    fn the_type_comes_from_the_body_or_the_shape_when_the_header_is_generic() {
        let docker = bytes(&docker_image());
        for header in [None, Some("application/json"), Some("")] {
            assert_eq!(
                Manifest::parse(header, &docker).unwrap().kind(),
                ManifestKind::DockerManifest
            );
        }
        // OCI manifests may omit mediaType; quay.io sends it empty.
        let oci = json!({"schemaVersion": 2, "mediaType": "",
            "config": desc(OCI_CONFIG, "c", 2), "layers": []});
        assert_eq!(
            Manifest::parse(None, &bytes(&oci)).unwrap().kind(),
            ManifestKind::OciManifest
        );
        let index = json!({"schemaVersion": 2, "manifests": []});
        assert_eq!(
            Manifest::parse(
                Some("application/vnd.oci.image.index.v1+json; charset=utf-8"),
                &bytes(&index)
            )
            .unwrap()
            .kind(),
            ManifestKind::OciIndex
        );
        let neither = json!({"schemaVersion": 2});
        assert_eq!(
            Manifest::parse(None, &bytes(&neither)),
            Err(ManifestError::UnknownKind)
        );
    }

    #[test]
    fn header_and_body_types_must_agree() {
        let error = Manifest::parse(Some(OCI_MANIFEST), &bytes(&docker_image())).unwrap_err();
        assert!(
            matches!(error, ManifestError::MediaTypeMismatch { .. }),
            "{error}"
        );
        let error =
            Manifest::parse(Some(DOCKER_MANIFEST_V1_SIGNED), &bytes(&docker_image())).unwrap_err();
        assert!(matches!(error, ManifestError::UnsupportedMediaType(_)));
        let mut body = docker_image();
        body["mediaType"] = json!("application/vnd.example+json");
        let error = Manifest::parse(None, &bytes(&body)).unwrap_err();
        assert!(matches!(error, ManifestError::UnsupportedMediaType(_)));
    }

    #[test]
    fn malformed_bodies_name_the_problem() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"{not json".to_vec(), "not valid JSON"),
            (b"[1,2]".to_vec(), "not a JSON object"),
            (
                bytes(&json!({"mediaType": DOCKER_MANIFEST})),
                "no `schemaVersion`",
            ),
            (
                bytes(&json!({"schemaVersion": 1, "mediaType": DOCKER_MANIFEST})),
                "schemaVersion is 1",
            ),
            (
                bytes(&json!({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "layers": []})),
                "no `config`",
            ),
            (
                bytes(&json!({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
                    "config": desc(DOCKER_CONFIG, "c", 1)})),
                "no `layers`",
            ),
            (
                bytes(&json!({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
                    "config": desc(DOCKER_CONFIG, "c", 1),
                    "layers": [{"mediaType": DOCKER_LAYER, "digest": "sha256:abc", "size": 1}]})),
                "`layers[0].digest` is not a valid digest",
            ),
            (
                bytes(&json!({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
                    "config": desc(DOCKER_CONFIG, "c", 1),
                    "layers": [{"mediaType": DOCKER_LAYER, "digest": digest("x").to_string(), "size": -1}]})),
                "`layers[0].size` must be a non-negative integer",
            ),
            (
                bytes(&json!({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
                    "config": {"digest": digest("x").to_string(), "size": 1}, "layers": []})),
                "no `config.mediaType`",
            ),
            (
                bytes(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": {}})),
                "`manifests` must be an array",
            ),
            (
                bytes(
                    &json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
                    {"mediaType": OCI_MANIFEST, "digest": digest("x").to_string(), "size": 1,
                     "platform": {"os": "linux"}}]}),
                ),
                "no `manifests[0].platform.architecture`",
            ),
        ];
        for (body, expected) in cases {
            let error = Manifest::parse(None, &body).unwrap_err();
            assert!(
                error.to_string().contains(expected),
                "{error} vs {expected}"
            );
            assert_eq!(
                RegistryError::from(error).code(),
                ErrorCode::ManifestInvalid
            );
        }
    }

    #[test]
    fn oversized_manifests_are_refused_before_parsing() {
        let body = vec![b' '; MAX_MANIFEST_SIZE + 1];
        let error = Manifest::parse(None, &body).unwrap_err();
        assert!(matches!(error, ManifestError::TooLarge { .. }));
        assert_eq!(
            RegistryError::from(error).status(),
            http::StatusCode::PAYLOAD_TOO_LARGE
        );
    }

    #[test]
    fn foreign_layers_duplicates_and_subjects_are_not_references() {
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.example.sbom",
            "config": desc(OCI_EMPTY, "{}", 2),
            "layers": [
                desc(OCI_LAYER_GZIP, "l1", 1),
                {"mediaType": DOCKER_FOREIGN_LAYER, "digest": digest("win").to_string(),
                 "size": 9, "urls": ["https://example.invalid/layer"]},
                desc(OCI_LAYER_GZIP, "l1", 1),
            ],
            "subject": desc(OCI_MANIFEST, "subject", 300),
            "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
        });
        let manifest = Manifest::parse(Some(OCI_MANIFEST), &bytes(&manifest)).unwrap();
        assert_eq!(manifest.references(), vec![digest("{}"), digest("l1")]);
        assert_eq!(manifest.descriptors().len(), 4);
        assert_eq!(manifest.subject().unwrap().digest, digest("subject"));
        let Manifest::Image(image) = manifest else {
            panic!("not an image")
        };
        assert!(image.layers[1].is_foreign());
        assert_eq!(image.layers[1].urls.len(), 1);
        assert_eq!(
            image.artifact_type.as_deref(),
            Some("application/vnd.example.sbom")
        );
        assert_eq!(image.annotations.len(), 1);
    }
}
