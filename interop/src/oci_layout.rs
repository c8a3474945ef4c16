//! Builds small OCI image layouts on disk (the `oci:` transport of skopeo and podman), so the
//! interop tests can push images without pulling anything from the internet.

use std::fs;
use std::io;
use std::path::Path;

use sha2::{Digest as _, Sha256};

/// What was written: the digests a test compares against what comes back.
#[derive(Debug, Clone)]
pub struct WrittenImage {
    /// Digest of the top-level manifest (the index for a multi-platform image).
    pub digest: String,
    /// Digests of the per-platform manifests (one for a single-platform image).
    pub manifests: Vec<String>,
    /// Every layer digest.
    pub layers: Vec<String>,
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn write_blob(dir: &Path, data: &[u8]) -> io::Result<String> {
    let digest = sha256(data);
    let hex = &digest["sha256:".len()..];
    fs::create_dir_all(dir.join("blobs/sha256"))?;
    fs::write(dir.join("blobs/sha256").join(hex), data)?;
    Ok(digest)
}

/// A tar archive with one regular file (uncompressed layers are valid OCI layers).
fn tar_with_file(name: &str, content: &[u8]) -> Vec<u8> {
    let mut header = [0u8; 512];
    header[..name.len()].copy_from_slice(name.as_bytes());
    header[100..108].copy_from_slice(b"0000644\0");
    header[108..116].copy_from_slice(b"0000000\0");
    header[116..124].copy_from_slice(b"0000000\0");
    let size = format!("{:011o}\0", content.len());
    header[124..136].copy_from_slice(size.as_bytes());
    header[136..148].copy_from_slice(b"00000000000\0");
    header[156] = b'0';
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    // The checksum is computed with its own field as spaces.
    header[148..156].copy_from_slice(b"        ");
    let sum: u32 = header.iter().map(|b| u32::from(*b)).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut tar = header.to_vec();
    tar.extend_from_slice(content);
    tar.resize(tar.len().div_ceil(512) * 512, 0);
    tar.extend_from_slice(&[0u8; 1024]);
    tar
}

fn descriptor(media_type: &str, digest: &str, size: usize) -> serde_json::Value {
    serde_json::json!({ "mediaType": media_type, "digest": digest, "size": size })
}

/// One image manifest for `arch` with `layers` layers of `layer_size` bytes each; returns
/// (manifest digest, manifest size, layer digests).
fn write_image(
    dir: &Path,
    arch: &str,
    layers: usize,
    layer_size: usize,
) -> io::Result<(String, usize, Vec<String>)> {
    let mut layer_descriptors = Vec::new();
    let mut layer_digests = Vec::new();
    let mut diff_ids = Vec::new();
    for index in 0..layers {
        // Distinct, incompressible-ish content per platform and layer.
        let seed = arch
            .bytes()
            .fold(index as u32 + 1, |a, b| a.wrapping_mul(31) ^ u32::from(b));
        let content: Vec<u8> = (0..layer_size as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) ^ seed).rotate_left(7) as u8)
            .collect();
        let tar = tar_with_file(&format!("layer{index}-{arch}.bin"), &content);
        let digest = write_blob(dir, &tar)?;
        diff_ids.push(digest.clone());
        layer_descriptors.push(descriptor(
            "application/vnd.oci.image.layer.v1.tar",
            &digest,
            tar.len(),
        ));
        layer_digests.push(digest);
    }
    let config = serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    })
    .to_string();
    let config_digest = write_blob(dir, config.as_bytes())?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config_digest, config.len()),
        "layers": layer_descriptors,
    })
    .to_string();
    let digest = write_blob(dir, manifest.as_bytes())?;
    Ok((digest, manifest.len(), layer_digests))
}

fn write_layout(
    dir: &Path,
    tag: &str,
    media_type: &str,
    digest: &str,
    size: usize,
) -> io::Result<()> {
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": media_type,
            "digest": digest,
            "size": size,
            "annotations": { "org.opencontainers.image.ref.name": tag },
        }],
    });
    fs::write(dir.join("index.json"), index.to_string())
}

/// A two-platform image (linux/amd64 and linux/arm64, two layers each) under `tag`.
pub fn write_multi_platform(dir: &Path, tag: &str, layer_size: usize) -> io::Result<WrittenImage> {
    let mut manifests = Vec::new();
    let mut layers = Vec::new();
    let mut entries = Vec::new();
    for arch in ["amd64", "arm64"] {
        let (digest, size, image_layers) = write_image(dir, arch, 2, layer_size)?;
        entries.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": size,
            "platform": { "architecture": arch, "os": "linux" },
        }));
        manifests.push(digest);
        layers.extend(image_layers);
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    })
    .to_string();
    let digest = write_blob(dir, index.as_bytes())?;
    write_layout(
        dir,
        tag,
        "application/vnd.oci.image.index.v1+json",
        &digest,
        index.len(),
    )?;
    Ok(WrittenImage {
        digest,
        manifests,
        layers,
    })
}

/// A single-platform linux/amd64 image with `layers` layers of `layer_size` bytes.
pub fn write_single(
    dir: &Path,
    tag: &str,
    layers: usize,
    layer_size: usize,
) -> io::Result<WrittenImage> {
    let (digest, size, layer_digests) = write_image(dir, "amd64", layers, layer_size)?;
    write_layout(
        dir,
        tag,
        "application/vnd.oci.image.manifest.v1+json",
        &digest,
        size,
    )?;
    Ok(WrittenImage {
        digest: digest.clone(),
        manifests: vec![digest],
        layers: layer_digests,
    })
}
