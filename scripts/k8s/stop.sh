#!/usr/bin/env bash
# Stop what start.sh started, by recorded pid only: TERM, then KILL after 5 s.
RUN_DIR=${1:?usage: stop.sh RUN_DIR}
for p in kcm apiserver etcd; do
  f="$RUN_DIR/$p.pid"
  [ -f "$f" ] || continue
  pid=$(cat "$f")
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
done
