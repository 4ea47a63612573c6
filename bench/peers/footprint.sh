#!/usr/bin/env bash
# First the time from exec to READY=1 (sd_notify) of a fresh `--dev` agent, five
# runs (ready.py; needs python3). Then the resident memory of a fresh, idle
# proglog agent: `--dev` (one node, no TLS), an
# empty data dir; VmRSS is read one second after the agent first answers
# `proglog servers`, then again after RUNS more seconds of idling. Then, unless
# LOAD=0, the peak (VmHWM) under `proglog bench produce` at 64 in flight, and
# after that under batches of 100 records, 8 in flight (DUR seconds each).
# Usage: bash bench/peers/footprint.sh   (needs target/release/proglog)
# Env:   PROGLOG_BIN=<repo>/target/release/proglog  PORT=18501  OUT=/tmp/proglog-footprint
#        RUNS=4  LOAD=1  DUR=10
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PROGLOG_BIN=${PROGLOG_BIN:-$REPO/target/release/proglog}
PORT=${PORT:-18501}; OUT=${OUT:-/tmp/proglog-footprint}
[ -x "$PROGLOG_BIN" ] || { echo "no $PROGLOG_BIN: run \`cargo build --release\` in $REPO" >&2; exit 1; }
rm -rf "$OUT"; mkdir -p "$OUT"
python3 "$HERE/ready.py" 5 "$PROGLOG_BIN" agent --dev --data-dir "{dir}" --rpc-port "$PORT" \
  --bind-addr "127.0.0.1:$((PORT + 1))" --log-level warn
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
[ "${LOAD:-1}" = 1 ] || exit 0
peak() { awk '/^VmHWM/ { printf "%.1f MiB", $2 / 1024 }' "/proc/$AGENT/status"; }
load() {
  "$PROGLOG_BIN" bench produce --addr "127.0.0.1:$PORT" --duration "${DUR:-10}s" --size 100 "$@" \
    | grep -E 'records/s|p50' | tr '\n' ' '
  echo
}
echo "64 in flight: $(load --in-flight 64)"
echo "peak RSS after it: $(peak)"
echo "batches of 100, 8 in flight: $(load --in-flight 8 --batch 100)"
echo "peak RSS after it: $(peak)"
