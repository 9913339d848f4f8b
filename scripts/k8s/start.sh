#!/usr/bin/env bash
# Start a loopback-only Kubernetes control plane: etcd (Debian etcd-server) + kube-apiserver v1.20.2
# (built by install.sh) + kube-controller-manager with only the garbage collector and namespace controllers.
# Usage: start.sh RUN_DIR
#   writes RUN_DIR/kubeconfig (bearer token; context "test-cert" in RUN_DIR/kubeconfig-cert uses a client
#   certificate), RUN_DIR/{etcd,apiserver,kcm}.pid and *.log; returns once /readyz is ok.
# Env: QM_K8S_BIN_DIR (required), ETCD, API_PORT (16443), ETCD_PORT (12379), ETCD_PEER_PORT (12380),
#      WITH_KCM (1), PROFILING (false; true serves the API server's /debug/pprof)
set -euo pipefail
RUN_DIR=${1:?usage: start.sh RUN_DIR}
BIN_DIR=${QM_K8S_BIN_DIR:?run scripts/k8s/install.sh first (it prints QM_K8S_BIN_DIR)}
ETCD=${ETCD:-$(command -v etcd || echo /usr/bin/etcd)}
API_PORT=${API_PORT:-16443}
ETCD_PORT=${ETCD_PORT:-12379}
ETCD_PEER_PORT=${ETCD_PEER_PORT:-12380}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$RUN_DIR"
RUN_DIR=$(cd "$RUN_DIR" && pwd)
PKI=$RUN_DIR/pki
[ -f "$PKI/ca.crt" ] || "$HERE/gen-pki.sh" "$PKI"

"$ETCD" --name qm --data-dir "$RUN_DIR/etcd-data" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "qm=http://127.0.0.1:$ETCD_PEER_PORT" \
  --log-level warn --unsafe-no-fsync \
  > "$RUN_DIR/etcd.log" 2>&1 &
echo $! > "$RUN_DIR/etcd.pid"

"$BIN_DIR/kube-apiserver" \
  --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
  --bind-address 127.0.0.1 --advertise-address 127.0.0.1 \
  --secure-port "$API_PORT" --insecure-port 0 \
  --cert-dir "$RUN_DIR/apiserver-certs" \
  --tls-cert-file "$PKI/server.crt" --tls-private-key-file "$PKI/server.key" \
  --client-ca-file "$PKI/ca.crt" \
  --token-auth-file "$PKI/tokens.csv" \
  --authorization-mode RBAC \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$PKI/sa.pub" \
  --service-account-signing-key-file "$PKI/sa.key" \
  --service-cluster-ip-range 10.0.0.0/24 \
  --endpoint-reconciler-type none \
  --disable-admission-plugins ServiceAccount \
  --profiling="${PROFILING:-false}" \
  > "$RUN_DIR/apiserver.log" 2>&1 &
echo $! > "$RUN_DIR/apiserver.pid"

kc() { # kubeconfig with the given current context
cat <<KC
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority: $PKI/ca.crt
users:
- name: admin-token
  user:
    token: test-admin-token
- name: admin-cert
  user:
    client-certificate: $PKI/admin.crt
    client-key: $PKI/admin.key
contexts:
- name: local
  context: {cluster: local, user: admin-token}
- name: local-cert
  context: {cluster: local, user: admin-cert}
current-context: $1
KC
}
kc local > "$RUN_DIR/kubeconfig"
kc local-cert > "$RUN_DIR/kubeconfig-cert"

ready=
for _ in $(seq 1 900); do   # up to ~90 s
  if curl -fsS --cacert "$PKI/ca.crt" -H "Authorization: Bearer test-admin-token" \
       "https://127.0.0.1:$API_PORT/readyz" >/dev/null 2>&1; then ready=1; break; fi
  for p in etcd apiserver; do
    if ! kill -0 "$(cat "$RUN_DIR/$p.pid")" 2>/dev/null; then
      echo "$p died; see $RUN_DIR/$p.log" >&2; tail -5 "$RUN_DIR/$p.log" >&2; exit 1
    fi
  done
  sleep 0.1
done
[ -n "$ready" ] || { echo "timeout waiting for kube-apiserver /readyz; see $RUN_DIR/apiserver.log" >&2; exit 1; }

if [ "${WITH_KCM:-1}" = 1 ]; then
  # ownerReference garbage collection and namespace deletion; nothing else (no scheduler, no kubelet)
  "$BIN_DIR/kube-controller-manager" --kubeconfig "$RUN_DIR/kubeconfig-cert" \
    --controllers garbagecollector,namespace --leader-elect=false \
    --port 0 --secure-port 0 --use-service-account-credentials=false \
    > "$RUN_DIR/kcm.log" 2>&1 &
  echo $! > "$RUN_DIR/kcm.pid"
fi
echo "control plane ready: KUBECONFIG=$RUN_DIR/kubeconfig" >&2
