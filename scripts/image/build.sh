#!/usr/bin/env bash
# Builds the container image on this machine with no Docker daemon and no base image (see oci.py):
#   scripts/image/build.sh [OUT_DIR]      release build, then OUT_DIR (default target/image) holds
#                                         layout/ (OCI layout), image.oci.tar, rootfs/ and summary.json.
# The image is ghcr.io/quartermaster-dev/quartermaster:<version>, the chart's default. Push it with
#   skopeo copy oci-archive:target/image/image.oci.tar docker://REGISTRY/quartermaster:<version>
# (or `podman load -i` / `docker load` where a daemon runs). QM_IMAGE_BINARY builds from another binary.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-target/image}
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
BIN=${QM_IMAGE_BINARY:-}
if [ -z "$BIN" ]; then
  cargo build --locked --release --quiet
  mkdir -p target/image-bin
  strip -o target/image-bin/quartermaster target/release/quartermaster
  BIN=target/image-bin/quartermaster
fi
python3 scripts/image/oci.py "$BIN" "$OUT" "ghcr.io/quartermaster-dev/quartermaster:$VERSION"
