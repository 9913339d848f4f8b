#!/usr/bin/env bash
# Start a throwaway PostgreSQL cluster on 127.0.0.1 for tests and benchmarks (initdb as user postgres,
# trust auth, no fsync). Usage: start.sh DIR [PORT]; prints the DATABASE_URL. Stop with stop.sh DIR.
set -euo pipefail
DIR=${1:?usage: start.sh DIR [PORT]}
PORT=${2:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}
BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
if [ -z "$BIN" ] || [ ! -x "$BIN/initdb" ]; then
  echo "[pg] installing postgresql" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >&2
  BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
fi
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
# NB: the cluster lives in its own /tmp folder owned by postgres (the caller's folder may be private to
# root); DIR only records where.
DATA=$(mktemp -d /tmp/qm-pg-XXXXXX)
[ "$(id -u)" = 0 ] && chown postgres "$DATA"
echo "$DATA" > "$DIR/pgdata"
as_pg "$BIN/initdb" -D "$DATA/data" -A trust -U postgres --no-sync >/dev/null
as_pg "$BIN/pg_ctl" -D "$DATA/data" -l "$DATA/pg.log" -w \
  -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DATA -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200 -c shared_buffers=256MB" \
  start >/dev/null
echo "postgres://postgres@127.0.0.1:$PORT/postgres"
