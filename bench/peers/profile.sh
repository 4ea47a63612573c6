#!/usr/bin/env bash
# Where a produce's time and CPU go on one proglog node (mutual TLS + ACL, as in
# peers.sh), under `proglog bench produce` at IN_FLIGHT calls in flight:
#   0. the agent's own hop histogram (proglog_raft_hop_duration_seconds, scraped
#      before and after the perf run): the mean time per entry in each hop;
#   1. perf stat on the agent: CPU time and context switches per record;
#   2. perf record on the agent (flat, by thread and by symbol): where that CPU goes;
#   3. strace -c on the agent (a separate run: strace slows it): syscalls per record.
# Usage: bash bench/peers/profile.sh   (from anywhere; needs perf, strace, openssl, curl and
#        target/release/proglog: `cargo build --release`)
# Env:   IN_FLIGHT=1  DUR=10 (s per run)  SIZE=100  OUT=/tmp/proglog-profile
#        DATA=/tmp/proglog-profile/data  PROGLOG_BIN=<repo>/target/release/proglog
# The agent listens on 127.0.0.1:18401 (gRPC), 127.0.0.1:17401 (gossip) and
# 127.0.0.1:19401 (metrics) and is
# killed by PID on exit.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
IN_FLIGHT=${IN_FLIGHT:-1}; DUR=${DUR:-10}; SIZE=${SIZE:-100}
OUT=${OUT:-/tmp/proglog-profile}; DATA=${DATA:-$OUT/data}
PROGLOG_BIN=${PROGLOG_BIN:-$REPO/target/release/proglog}
. "$HERE/tls.sh"
. "$HERE/hops.sh"
for tool in perf strace openssl curl; do
  command -v "$tool" >/dev/null || { echo "profile.sh needs $tool (apt-get install -y linux-perf strace openssl curl)" >&2; exit 1; }
done
[ -x "$PROGLOG_BIN" ] || { echo "no $PROGLOG_BIN: run \`cargo build --release\` in $REPO" >&2; exit 1; }

rm -rf "$OUT"; mkdir -p "$OUT" "$DATA"
t="$OUT/tls"; proglog_tls_setup "$t" || exit 1
cli=(--addr 127.0.0.1:18401 --tls-ca-file "$t/ca.pem" --tls-cert-file "$t/root-client.pem"
     --tls-key-file "$t/root-client-key.pem")
"$PROGLOG_BIN" agent --data-dir "$DATA" --node-name p1 --bind-addr 127.0.0.1:17401 --rpc-port 18401 \
  --bootstrap --server-tls-cert-file "$t/server.pem" --server-tls-key-file "$t/server-key.pem" \
  --server-tls-ca-file "$t/ca.pem" --peer-tls-cert-file "$t/server.pem" \
  --peer-tls-key-file "$t/server-key.pem" --peer-tls-ca-file "$t/ca.pem" \
  --acl-model-file "$t/model.conf" --acl-policy-file "$t/policy.csv" --log-level warn \
  --metrics-addr 127.0.0.1:19401 \
  > "$OUT/agent.log" 2>&1 &
AGENT=$!
trap 'kill $AGENT 2>/dev/null; wait $AGENT 2>/dev/null' EXIT
for _ in $(seq 1 60); do
  "$PROGLOG_BIN" servers "${cli[@]}" 2>/dev/null | grep -q leader && break
  kill -0 $AGENT 2>/dev/null || { echo "the agent exited:" >&2; cat "$OUT/agent.log" >&2; exit 1; }
  sleep 0.5
done

bench() { # json file: one bench run of DUR seconds
  "$PROGLOG_BIN" bench produce "${cli[@]}" --in-flight "$IN_FLIGHT" --size "$SIZE" \
    --duration "${DUR}s" --json > "$1"
}
field() { sed -n "s/.*\"$2\":\([0-9.]*\).*/\1/p" "$1" | head -1; } # json file, key
# The tools watch the middle of the run (1 s after its start, DUR-2 s long).
watch=$((DUR - 2))

hops_scrape 127.0.0.1:19401 "$OUT/hops-before.txt"
bench "$OUT/bench-perf.json" &
B=$!
sleep 1
perf stat -e task-clock,context-switches,cpu-migrations -p $AGENT -o "$OUT/perf-stat.txt" -- sleep $watch &
P=$!
perf record -F 999 -p $AGENT -o "$OUT/perf.data" -- sleep $watch > /dev/null 2>&1
wait $P $B
hops_scrape 127.0.0.1:19401 "$OUT/hops-after.txt"
bench "$OUT/bench-strace.json" &
B=$!
sleep 1
strace -f -c -o "$OUT/strace.txt" -p $AGENT 2>/dev/null &
S=$!
# The watch window's length, not synchronisation: strace detaches on SIGTERM and
# writes its summary.
sleep $watch; kill $S 2>/dev/null; wait $S 2>/dev/null; wait $B

perf report -i "$OUT/perf.data" --stdio --no-children --sort comm 2>/dev/null \
  | grep -v '^#' | grep -v '^$' | head -15 > "$OUT/by-thread.txt"
perf report -i "$OUT/perf.data" --stdio --no-children --sort dso,sym 2>/dev/null \
  | grep -v '^#' | grep -v '^$' | head -40 > "$OUT/by-symbol.txt"

j="$OUT/bench-perf.json"; rate=$(field "$j" records_per_sec)
echo "== IN_FLIGHT=$IN_FLIGHT SIZE=$SIZE, $DUR s runs; perf run: $(field "$j" records) records," \
  "$(printf %.0f "$rate") rec/s, p50 $(field "$j" p50_us) us, p99 $(field "$j" p99_us) us"
awk -v rate="$rate" -v w="$watch" '
  /task-clock/ { ms=$1; gsub(",","",ms); printf "agent CPU: %.0f us per record (%.2f cores)\n", ms*1000/(rate*w), ms/1000/w }
  /context-switches/ { c=$1; gsub(",","",c); printf "agent context switches: %.1f per record\n", c/(rate*w) }' "$OUT/perf-stat.txt"
echo "== mean time per entry in each hop (the agent's hop histogram, perf run)"
hops_report "$OUT/hops-before.txt" "$OUT/hops-after.txt"
j="$OUT/bench-strace.json"; srate=$(field "$j" records_per_sec)
echo "== syscalls per record (strace run: $(printf %.0f "$srate") rec/s, slowed by strace)"
awk -v r="$srate" -v w="$watch" '$1 ~ /^[0-9.]+$/ && NF >= 5 { printf "  %-16s %6.2f\n", $NF, $4/(r*w) }' "$OUT/strace.txt" \
  | sort -k2 -nr | head -12
echo "== agent CPU by thread (perf record)"; cat "$OUT/by-thread.txt"
echo "== agent CPU by symbol, top 40 (perf record)"; cat "$OUT/by-symbol.txt"
echo "(files in $OUT)"
