#!/usr/bin/env python3
"""Writes Quartermaster's container image as an OCI image layout (and an oci-archive tar of it), with no
daemon and no base image: one layer holding the binary, the shared libraries it loads (from `ldd`), the
CA certificates, and a non-root user. Deterministic: the same inputs give the same digests.

    oci.py BINARY OUT_DIR IMAGE_REF

OUT_DIR/layout is the OCI layout, OUT_DIR/image.oci.tar its archive (`skopeo copy oci-archive:...`),
OUT_DIR/rootfs the unpacked filesystem (what the layer holds), and OUT_DIR/summary.json the sizes and
digests."""

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile

UID = 65532  # the conventional "nonroot" user of distroless images
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def shared_libraries(binary):
    """The absolute paths of the shared objects `binary` loads, with its program interpreter."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    libs = []
    for line in out.splitlines():
        m = re.search(r"(/\S+) \(0x", line)
        if m:
            libs.append(m.group(1))
    return sorted(set(libs))


def add_file(tar, path, data, mode):
    info = tarfile.TarInfo(path.lstrip("/"))
    info.size, info.mode, info.mtime = len(data), mode, 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def add_dir(tar, path, mode=0o755):
    info = tarfile.TarInfo(path.lstrip("/"))
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, 0
    tar.addfile(info)


def layer(binary):
    """The layer's tar bytes and the list of its files."""
    files = {"/quartermaster": (open(binary, "rb").read(), 0o555)}
    for lib in shared_libraries(binary):
        files[lib] = (open(os.path.realpath(lib), "rb").read(), 0o555)
    if os.path.exists(CA_BUNDLE):
        files[CA_BUNDLE] = (open(CA_BUNDLE, "rb").read(), 0o444)
    files["/etc/passwd"] = (f"root:x:0:0:root:/:/sbin/nologin\nnonroot:x:{UID}:{UID}:nonroot:/:/sbin/nologin\n".encode(), 0o444)
    files["/etc/group"] = (f"root:x:0:\nnonroot:x:{UID}:\n".encode(), 0o444)
    dirs = {"/tmp"}
    for path in files:
        parent = os.path.dirname(path)
        while parent not in ("", "/"):
            dirs.add(parent)
            parent = os.path.dirname(parent)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in sorted(dirs):
            add_dir(tar, d, 0o1777 if d == "/tmp" else 0o755)
        for path in sorted(files):
            data, mode = files[path]
            add_file(tar, path, data, mode)
    return buf.getvalue(), sorted(files)


def blob(layout, data):
    digest = hashlib.sha256(data).hexdigest()
    path = os.path.join(layout, "blobs", "sha256", digest)
    with open(path, "wb") as f:
        f.write(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def main():
    binary, out, ref = sys.argv[1:4]
    version = ref.rsplit(":", 1)[-1]
    shutil.rmtree(out, ignore_errors=True)
    layout = os.path.join(out, "layout")
    os.makedirs(os.path.join(layout, "blobs", "sha256"))
    tar_bytes, files = layer(binary)
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0, compresslevel=9) as g:
        g.write(tar_bytes)
    layer_desc = blob(layout, gz.getvalue())
    layer_desc["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip"
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": f"{UID}:{UID}",
            "Entrypoint": ["/quartermaster"],
            "Cmd": ["run"],
            "WorkingDir": "/",
            "Env": ["PATH=/", "SSL_CERT_FILE=" + CA_BUNDLE],
            "ExposedPorts": {"8080/tcp": {}},
            "Labels": {
                "org.opencontainers.image.title": "quartermaster",
                "org.opencontainers.image.version": version,
            },
        },
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(tar_bytes).hexdigest()]},
        "history": [{"created_by": "scripts/image/oci.py: the quartermaster binary and its shared libraries"}],
    }
    config_desc = blob(layout, json.dumps(config, sort_keys=True).encode())
    config_desc["mediaType"] = "application/vnd.oci.image.config.v1+json"
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_desc,
        "layers": [layer_desc],
    }
    manifest_desc = blob(layout, json.dumps(manifest, sort_keys=True).encode())
    manifest_desc["mediaType"] = "application/vnd.oci.image.manifest.v1+json"
    manifest_desc["annotations"] = {"org.opencontainers.image.ref.name": ref}
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                   "manifests": [manifest_desc]}, f, sort_keys=True)
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    archive = os.path.join(out, "image.oci.tar")
    with tarfile.open(archive, "w") as tar:
        tar.add(layout, arcname=".")
    rootfs = os.path.join(out, "rootfs")
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        tar.extractall(rootfs, filter="tar")
    summary = {
        "ref": ref,
        "manifest": manifest_desc["digest"],
        "compressedBytes": layer_desc["size"],
        "uncompressedBytes": len(tar_bytes),
        "files": files,
        "user": config["config"]["User"],
    }
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2, sort_keys=True)
    print(json.dumps({k: summary[k] for k in ("ref", "manifest", "compressedBytes", "uncompressedBytes")}))


if __name__ == "__main__":
    main()
