"""A CI job's uploader, written the way a user would: Python grpcio stubs generated from
kraken's proto/ at run time, mutual TLS with a `client` certificate.

It uploads an image's blobs (layer, config, manifest) to the origins that own them, asking
any origin where each digest lives (`Locations`), then tags the manifest on the build-index.

usage: ci_upload.py PROTO_DIR STUB_DIR CA CERT KEY ORIGIN BUILD_INDEX REPOSITORY TAG LAYER_FILE
Prints the manifest digest.
"""

import hashlib
import json
import os
import sys


def generate_stubs(proto_dir, stub_dir):
    from grpc_tools import protoc
    import grpc_tools

    os.makedirs(stub_dir, exist_ok=True)
    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    files = [
        "kraken/common/v1/common.proto",
        "kraken/origin/v1/origin.proto",
        "kraken/buildindex/v1/buildindex.proto",
    ]
    code = protoc.main(
        ["protoc", f"-I{proto_dir}", f"-I{include}",
         f"--python_out={stub_dir}", f"--grpc_python_out={stub_dir}"] + files
    )
    if code != 0:
        sys.exit(f"protoc failed with {code}")
    sys.path.insert(0, stub_dir)


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def main():
    (proto_dir, stub_dir, ca, cert, key, origin, build_index,
     repository, tag, layer_file) = sys.argv[1:11]
    generate_stubs(proto_dir, stub_dir)
    import grpc
    from kraken.origin.v1 import origin_pb2, origin_pb2_grpc
    from kraken.buildindex.v1 import buildindex_pb2, buildindex_pb2_grpc

    with open(ca, "rb") as f_ca, open(cert, "rb") as f_cert, open(key, "rb") as f_key:
        credentials = grpc.ssl_channel_credentials(f_ca.read(), f_key.read(), f_cert.read())
    # The dev PKI's server certificates are issued for localhost.
    options = [("grpc.ssl_target_name_override", "localhost")]

    def channel(address):
        return grpc.secure_channel(address, credentials, options)

    def upload(data):
        digest = sha256(data)
        locations = origin_pb2_grpc.BlobServiceStub(channel(origin)).Locations(
            origin_pb2.LocationsRequest(digest=digest), timeout=30)
        owner = locations.origins[0].address
        stub = origin_pb2_grpc.BlobServiceStub(channel(owner))

        def parts():
            yield origin_pb2.UploadRequest(header=origin_pb2.UploadHeader(
                namespace=repository, digest=digest, size=len(data)))
            for start in range(0, len(data), 1 << 20):
                yield origin_pb2.UploadRequest(chunk=data[start:start + (1 << 20)])

        reply = stub.Upload(parts(), timeout=120)
        if reply.digest != digest or reply.size != len(data):
            sys.exit(f"origin {owner} stored {reply.digest}/{reply.size}, sent {digest}/{len(data)}")
        return digest, len(data)

    with open(layer_file, "rb") as f:
        layer = f.read()
    layer_digest, layer_size = upload(layer)
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }).encode()
    config_digest, config_size = upload(config)
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": layer_size}],
    }).encode()
    manifest_digest, _ = upload(manifest)
    tags = buildindex_pb2_grpc.TagServiceStub(channel(build_index))
    tags.Put(buildindex_pb2.PutRequest(tag=f"{repository}:{tag}", digest=manifest_digest),
             timeout=30)
    got = tags.Get(buildindex_pb2.GetRequest(tag=f"{repository}:{tag}"), timeout=30)
    if got.digest != manifest_digest:
        sys.exit(f"build-index answered {got.digest} for the tag, expected {manifest_digest}")
    print(manifest_digest)


if __name__ == "__main__":
    main()
