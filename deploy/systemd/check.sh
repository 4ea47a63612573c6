#!/usr/bin/env bash
# Checks the systemd units: `systemd-analyze verify` (with ExecStart
# pointing at a built proglog binary, since /usr/local/bin/proglog need not
# exist here) and `systemd-analyze security --offline=true` (exposure must
# be 2.0 or lower). Prints one line per unit and check; exits non-zero on
# any failure. Usage: deploy/systemd/check.sh [path/to/proglog]
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="$(realpath "${1:-$here/../../target/debug/proglog}")"
max_exposure="2.0"
if ! command -v systemd-analyze >/dev/null; then
  echo "systemd check: FAILED: systemd-analyze not found (apt-get install systemd)"
  exit 1
fi
if [ ! -x "$bin" ]; then
  echo "systemd check: FAILED: no proglog binary at $bin (cargo build first)"
  exit 1
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
failed=0
# The template is checked as an instance, as systemd would run it.
for unit in proglog.service proglog@node1.service; do
  src="$here/${unit/@node1/@}"
  sed "s|/usr/local/bin/proglog|$bin|" "$src" > "$tmp/$unit"
  if out="$(systemd-analyze verify "$tmp/$unit" 2>&1)" && [ -z "$out" ]; then
    echo "verify   $unit: ok"
  else
    echo "verify   $unit: FAILED"
    printf '%s\n' "$out" | sed 's/^/    /'
    failed=1
  fi
  exposure="$(systemd-analyze security --offline=true "$tmp/$unit" 2>&1 \
    | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')"
  if [ -n "$exposure" ] && awk -v e="$exposure" -v m="$max_exposure" 'BEGIN { exit !(e <= m) }'; then
    echo "security $unit: exposure $exposure (<= $max_exposure): ok"
  else
    echo "security $unit: exposure ${exposure:-unknown} (> $max_exposure): FAILED"
    failed=1
  fi
done
exit $failed
