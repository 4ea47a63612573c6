#!/usr/bin/env bash
# Instructions the agent executes per record produced: a count that machine
# noise does not move, to compare two builds where records/s cannot tell them
# apart. One `--dev` agent (one node, no TLS) runs under valgrind's callgrind;
# after a warm-up the counters are zeroed, `proglog bench produce` sends OPS
# calls, and the instructions counted since are divided by the records.
# Under valgrind the agent runs ~50x slower on one thread, so Raft entries
# carry more records each than at full speed: compare builds with this, not
# with profile.sh.
# Usage: bash bench/peers/instructions.sh   (needs valgrind and target/release/proglog)
# Env:   PROGLOG_BIN=<repo>/target/release/proglog  PORT=18601  OUT=/tmp/proglog-instructions
#        IN_FLIGHT=64  BATCH=1 (records per call)  OPS=20000 (calls)  SIZE=100
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PROGLOG_BIN=${PROGLOG_BIN:-$REPO/target/release/proglog}
PORT=${PORT:-18601}; OUT=${OUT:-/tmp/proglog-instructions}
IN_FLIGHT=${IN_FLIGHT:-64}; BATCH=${BATCH:-1}; OPS=${OPS:-20000}; SIZE=${SIZE:-100}
[ -x "$PROGLOG_BIN" ] || { echo "no $PROGLOG_BIN: run \`cargo build --release\` in $REPO" >&2; exit 1; }
command -v callgrind_control > /dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
rm -rf "$OUT"; mkdir -p "$OUT"
valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out" \
  "$PROGLOG_BIN" agent --dev --data-dir "$OUT/data" --rpc-port "$PORT" \
  --bind-addr "127.0.0.1:$((PORT + 1))" --log-level warn > "$OUT/agent.log" 2>&1 &
AGENT=$!
trap 'kill $AGENT 2>/dev/null; wait $AGENT 2>/dev/null' EXIT
for _ in $(seq 1 300); do
  "$PROGLOG_BIN" servers --addr "127.0.0.1:$PORT" 2>/dev/null | grep -q leader && break
  kill -0 $AGENT 2>/dev/null || { echo "the agent exited:" >&2; cat "$OUT/agent.log" >&2; exit 1; }
  sleep 0.5
done
produce() { # calls
  "$PROGLOG_BIN" bench produce --addr "127.0.0.1:$PORT" --in-flight "$IN_FLIGHT" \
    --batch "$BATCH" --size "$SIZE" --ops "$1" --duration 600s --json
}
produce $((OPS / 10)) > "$OUT/warmup.json" || exit 1
callgrind_control -z $AGENT > /dev/null 2>&1
produce "$OPS" > "$OUT/bench.json" || exit 1
callgrind_control -d $AGENT > /dev/null 2>&1
records=$(sed -n 's/.*"records":\([0-9]*\).*/\1/p' "$OUT/bench.json")
# The dump written last holds the counts since the zeroing.
dump=$(ls -t "$OUT"/callgrind.out* | head -1)
ir=$(sed -n 's/^summary: \([0-9]*\).*/\1/p' "$dump")
[ -n "$ir" ] || ir=$(sed -n 's/^totals: \([0-9]*\).*/\1/p' "$dump")
echo "IN_FLIGHT=$IN_FLIGHT BATCH=$BATCH SIZE=$SIZE: $records records, $ir instructions," \
  "$((ir / records)) per record ($(basename "$PROGLOG_BIN"))"
