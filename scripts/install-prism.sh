#!/usr/bin/env bash
# Install (once) Prism, the OpenAPI mock server the vendor-client tests run against, from the npm registry.
# Cached under $QM_CACHE/prism-5; prints the `export QM_PRISM=...` line.
set -euo pipefail
QM_CACHE=${QM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/quartermaster}
DIR=$QM_CACHE/prism-5
if [ ! -x "$DIR/node_modules/.bin/prism" ]; then
  if ! command -v npm >/dev/null; then
    echo "[prism] installing nodejs and npm" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >&2
  fi
  echo "[prism] npm install @stoplight/prism-cli@5.16.0 into $DIR" >&2
  mkdir -p "$DIR"
  npm install --prefix "$DIR" --no-audit --no-fund --loglevel=error @stoplight/prism-cli@5.16.0 >&2
fi
echo "export QM_PRISM='$DIR/node_modules/.bin/prism'"
