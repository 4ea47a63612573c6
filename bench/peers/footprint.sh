#!/usr/bin/env bash
# Resident memory of a fresh, idle proglog agent: `--dev` (one node, no TLS), an
# empty data dir; VmRSS is read one second after the agent first answers
# `proglog servers`, then again after RUNS more seconds of idling.
# Usage: bash bench/peers/footprint.sh   (needs target/release/proglog)
# Env:   PROGLOG_BIN=<repo>/target/release/proglog  PORT=18501  OUT=/tmp/proglog-footprint
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PROGLOG_BIN=${PROGLOG_BIN:-$REPO/target/release/proglog}
PORT=${PORT:-18501}; OUT=${OUT:-/tmp/proglog-footprint}
[ -x "$PROGLOG_BIN" ] || { echo "no $PROGLOG_BIN: run \`cargo build --release\` in $REPO" >&2; exit 1; }
rm -rf "$OUT"; mkdir -p "$OUT"
"$PROGLOG_BIN" agent --dev --data-dir "$OUT/data" --rpc-port "$PORT" \
  --bind-addr "127.0.0.1:$((PORT + 1))" --log-level warn > "$OUT/agent.log" 2>&1 &
AGENT=$!
trap 'kill $AGENT 2>/dev/null; wait $AGENT 2>/dev/null' EXIT
for _ in $(seq 1 100); do
  "$PROGLOG_BIN" servers --addr "127.0.0.1:$PORT" >/dev/null 2>&1 && break
  kill -0 $AGENT 2>/dev/null || { echo "the agent exited:" >&2; cat "$OUT/agent.log" >&2; exit 1; }
  sleep 0.1
done
rss() { awk '/^VmRSS/ { printf "%.1f MiB", $2 / 1024 }' "/proc/$AGENT/status"; }
# Measurement delays, not synchronisation: the agent is already serving.
sleep 1; echo "idle RSS 1 s after serving: $(rss)"
sleep "${RUNS:-4}"; echo "idle RSS $((1 + ${RUNS:-4})) s after serving: $(rss)"
