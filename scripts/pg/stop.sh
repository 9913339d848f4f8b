#!/usr/bin/env bash
# Stop the cluster start.sh started in DIR and remove it.
DIR=${1:?usage: stop.sh DIR}
BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
DATA=$(cat "$DIR/pgdata" 2>/dev/null)
if [ -n "$DATA" ] && [ -d "$DATA/data" ]; then
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$BIN/pg_ctl" -D "$DATA/data" -m fast -w stop >/dev/null 2>&1
  else "$BIN/pg_ctl" -D "$DATA/data" -m fast -w stop >/dev/null 2>&1; fi
  rm -rf "$DATA"
fi
rm -f "$DIR/pgdata"
