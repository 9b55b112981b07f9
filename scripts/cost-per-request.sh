#!/usr/bin/env bash
# What one request costs in user-space instructions, `graft serve` against the same service
# compiled into one plain axum binary (tests/static-baseline): a measure that, unlike requests/s
# on a shared machine, does not move from run to run.
#
# Run: scripts/cost-per-request.sh [--requests 5000]
#
# Both servers run under valgrind's callgrind, instrumentation off until each has answered
# some requests (start-up, and the first requests' one-time work, are not counted); then the
# same client sends `--requests` POST /foo, one keep-alive connection, one at a time, to each.
# Counted: every instruction the server process runs in user space (its threads, libc, the
# plugins), not the kernel's, and callgrind's simulated first-level instruction-cache misses.
# Slower than real by about 100 times; the counts are what matter. The route is `mode =
# "inline"`: at real speed `auto` runs these calls inline, but slowed down this much they would
# exceed its budget and `auto` would move them to the blocking pool.
#
# It ends with exactly one line (per request; cost_ratio = graft's instructions / the static
# binary's, 1.000 = the same):
#   requests=N instructions_graft=N instructions_static=N cost_ratio=R i1_misses_graft=N i1_misses_static=N
set -euo pipefail
. "$(dirname "$0")/lib.sh"

requests=5000
while [ $# -gt 0 ]; do
  case "$1" in
    --requests) requests=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

need valgrind
pack_foo_releases
cargo build --release --quiet -p static-baseline

port_app=$port port_admin=$((port + 1)) port_static=$((port + 2))
foo_config data "$work/v1" "" 'mode = "inline"' >"$work/graft.toml"

cat >"$work/client.py" <<'PY'
# client.py PORT N: N requests on one keep-alive connection, each checked.
import http.client, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
for _ in range(n):
    conn.request("POST", "/foo", body=b'{"a": 7}', headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    body = response.read()
    assert response.status == 200 and b'"value":16' in body, (response.status, body)
PY

# under_callgrind NAME COMMAND...: starts COMMAND under callgrind, instrumentation off.
under_callgrind() {
  local name=$1
  shift
  (cd "$work" && RUST_LOG=warn exec valgrind --tool=callgrind --cache-sim=yes --instr-atstart=no \
    --callgrind-out-file="$work/$name.out" "$@" >"$work/$name.log" 2>&1) &
  pids+=($!)
  eval "${name}_pid=$!"
}
under_callgrind graft "$graft" serve --config graft.toml
under_callgrind static "$target/static-baseline" "127.0.0.1:$port_static"
# Any answer will do (a GET of /foo is a 405); under valgrind, starting takes seconds.
wait_for "http://127.0.0.1:$port_app/foo" 60
wait_for "http://127.0.0.1:$port_static/foo" 60

# Warm-up uncounted, then instrumentation on, more warm-up (callgrind's own first-time
# translation of the code paths), the counters zeroed, and the measured requests.
python3 "$work/client.py" "$port_app" 200
python3 "$work/client.py" "$port_static" 200
callgrind_control -i on "$graft_pid" "$static_pid" >/dev/null 2>&1
python3 "$work/client.py" "$port_app" 200
python3 "$work/client.py" "$port_static" 200
callgrind_control -z "$graft_pid" "$static_pid" >/dev/null 2>&1
python3 "$work/client.py" "$port_app" "$requests"
python3 "$work/client.py" "$port_static" "$requests"
callgrind_control -i off "$graft_pid" "$static_pid" >/dev/null 2>&1
kill "$graft_pid" "$static_pid"
wait "$graft_pid" "$static_pid" 2>/dev/null || true

# The `events:` and `totals:` lines of each profile: the events counted since the counters
# were zeroed (Ir: instructions; I1mr: first-level instruction-cache misses).
per_request() {
  awk -v event="$2" -v n="$requests" '
    /^events:/ { for (i = 2; i <= NF; i++) if ($i == event) column = i }
    /^totals:/ { printf "%d", $column / n }' "$work/$1.out"
}
graft_cost=$(per_request graft Ir) static_cost=$(per_request static Ir)
echo "requests=$requests instructions_graft=$graft_cost instructions_static=$static_cost" \
  "cost_ratio=$(awk -v g="$graft_cost" -v s="$static_cost" 'BEGIN { printf "%.3f", g / s }')" \
  "i1_misses_graft=$(per_request graft I1mr) i1_misses_static=$(per_request static I1mr)"
