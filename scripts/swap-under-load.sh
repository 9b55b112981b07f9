#!/usr/bin/env bash
# The swap-under-load proof: wrk drives `graft serve` (the foo/bar/frob service) on loopback
# while releases v1 and v2 are deployed alternately; a Lua script checks every response.
#
# Run: scripts/swap-under-load.sh [--duration 30] [--interval-ms 50] [--connections 32]
#                                 [--threads 2] [--baseline restart] [--unload-policy never]
#
# It runs the same load twice: first steady (no deploys), then swapping. One route in ten is
# slow (foo pauses 5 ms between its frob call and its bar call), so requests straddle swaps.
# With --baseline restart, the swapping run restarts the service as a process on each deploy
# instead (what people do without graft). It ends with exactly one line:
#   requests=N non2xx=N socket_errors=N mixed=N deploys=N rps_swapping=N rps_steady=N
# where `mixed` counts responses whose foo, bar and frob major versions disagree.
set -euo pipefail
cd "$(dirname "$0")/.."

duration=30 interval_ms=50 connections=32 threads=2 baseline=graft unload_policy=when-drained
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration=$2; shift 2 ;;
    --interval-ms) interval_ms=$2; shift 2 ;;
    --connections) connections=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --baseline) baseline=$2; shift 2 ;;
    --unload-policy) unload_policy=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
[ "$baseline" = graft ] || [ "$baseline" = restart ] || { echo "--baseline takes: restart" >&2; exit 2; }

if ! command -v wrk >/dev/null; then
  echo "installing wrk" >&2
  (apt-get update -qq && apt-get install -y -qq wrk) >/dev/null
fi

echo "building (release)" >&2
cargo build --release --quiet -p graft-host --bins
cargo build --release --quiet -p foo-v1 -p bar-v1 -p frob-v1 -p foo-v2 -p bar-v2 -p frob-v2
target="${CARGO_TARGET_DIR:-target}/release"
graft="$target/graft"
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
lib() { echo "$target/lib${1//-/_}.so"; }
"$graft" pack "$work/v1" --name v1 --complete "$(lib foo-v1)" "$(lib bar-v1)" "$(lib frob-v1)" >/dev/null
"$graft" pack "$work/v2" --name v2 --complete "$(lib foo-v2)" "$(lib bar-v2)" "$(lib frob-v2)" >/dev/null

port_app=$((20000 + RANDOM % 20000))
port_admin=$((port_app + 1))
# config NAME RELEASE: a graft.toml with its own data dir, on the fixed loopback ports.
config() {
  cat >"$work/$1.toml" <<EOF
data_dir = "data-$1"
release = "$2"
listen = "127.0.0.1:$port_app"
drain_timeout_ms = 10000
unload_policy = "$unload_policy"

[admin]
listen = "127.0.0.1:$port_admin"

[[route]]
method = "POST"
path = "/foo"
export = "foo@1"

[[route]]
method = "POST"
path = "/slow"
export = "foo@1"
EOF
  echo "$work/$1.toml"
}

# start CONFIG: starts graft serve in the background; waits until it serves.
start() {
  RUST_LOG=warn "$graft" serve --config "$1" >>"$work/serve.log" 2>&1 &
  pids+=($!)
  server=$!
  for _ in $(seq 1 500); do
    curl -s -o /dev/null -X POST -d '{"a":1}' "http://127.0.0.1:$port_app/foo" && return 0
    sleep 0.01
  done
  echo "graft serve did not start; log:" >&2; cat "$work/serve.log" >&2; exit 1
}

cat >"$work/check.lua" <<'EOF'
-- Nine fast requests, then one slow one; every response must be 2xx and unmixed.
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args)
  n, mixed, bad = 0, 0, 0
  wrk.headers["Content-Type"] = "application/json"
end
function request()
  n = n + 1
  if n % 10 == 0 then
    return wrk.format("POST", "/slow", nil, '{"a": 7, "pause_ms": 5}')
  end
  return wrk.format("POST", "/foo", nil, '{"a": 7}')
end
function response(status, headers, body)
  if status < 200 or status > 299 then bad = bad + 1; return end
  local f = body:match('"foo":"(%d+)%.')
  local b = body:match('"bar":"(%d+)%.')
  local r = body:match('"frob":"(%d+)%.')
  if f == nil or f ~= b or b ~= r then mixed = mixed + 1 end
end
function done(summary, latency, requests)
  local m, b = 0, 0
  for _, t in ipairs(threads) do m = m + t:get("mixed"); b = b + t:get("bad") end
  local e = summary.errors
  io.write(string.format("RESULT requests=%d non2xx=%d socket_errors=%d mixed=%d rps=%d\n",
    summary.requests, b, e.connect + e.read + e.write + e.timeout, m,
    math.floor(summary.requests / (summary.duration / 1e6))))
end
EOF

load() { wrk -t"$threads" -c"$connections" -d"${duration}s" -s "$work/check.lua" "http://127.0.0.1:$port_app" | grep '^RESULT'; }
field() { echo "$1" | tr ' ' '\n' | grep "^$2=" | cut -d= -f2; }

# Steady: the same load, no deploys.
start "$(config steady "$work/v1")"
echo "steady run: ${duration}s" >&2
steady=$(load)
kill -TERM "$server"; wait "$server" || true

# Swapping.
deploys_file="$work/deploys"
echo 0 >"$deploys_file"
if [ "$baseline" = graft ]; then
  start "$(config swap "$work/v1")"
  echo "swapping run: ${duration}s, a deploy every ${interval_ms} ms" >&2
  # One keep-alive client for all deploys: spawning a process per deploy would cost the
  # server's CPU more than the deploys do.
  python3 - "$port_admin" "$work" "$duration" "$interval_ms" "$deploys_file" <<'PY' &
import http.client, json, sys, time
port, work, duration, interval_ms, out = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
conn = http.client.HTTPConnection("127.0.0.1", int(port))
deadline, i, ok = time.monotonic() + duration, 0, 0
while time.monotonic() < deadline:
    release = "v2" if i % 2 == 0 else "v1"
    conn.request("POST", "/deploy", json.dumps({"dir": f"{work}/{release}"}), {"Content-Type": "application/json"})
    response = conn.getresponse()
    body = response.read()
    if response.status == 200:
        ok += 1
    else:
        print(f"deploy {release} refused: {body.decode()}", file=sys.stderr)
    i += 1
    time.sleep(interval_ms / 1000)
open(out, "w").write(str(ok))
PY
  deployer=$!
  swapping=$(load)
  wait "$deployer"
  kill -TERM "$server"; wait "$server" || true
else
  v1_config=$(config restart-v1 "$work/v1")
  v2_config=$(config restart-v2 "$work/v2")
  start "$v1_config"
  echo "restart baseline: ${duration}s, a restart every ${interval_ms} ms" >&2
  (
    deadline=$((SECONDS + duration)); i=0
    while [ $SECONDS -lt $deadline ]; do
      sleep "$(printf '0.%03d' "$interval_ms")"
      next=$([ $((i % 2)) -eq 0 ] && echo "$v2_config" || echo "$v1_config")
      rm -rf "$work/data-restart-v1" "$work/data-restart-v2"
      kill -TERM "$(cat "$work/server.pid")" 2>/dev/null || true
      while kill -0 "$(cat "$work/server.pid")" 2>/dev/null; do sleep 0.001; done
      RUST_LOG=warn "$graft" serve --config "$next" >>"$work/serve.log" 2>&1 &
      echo $! >"$work/server.pid"
      i=$((i + 1)); echo $i >"$deploys_file"
    done
    kill -TERM "$(cat "$work/server.pid")" 2>/dev/null || true
  ) &
  echo "$server" >"$work/server.pid"
  restarter=$!
  swapping=$(load)
  wait "$restarter"
fi

echo "requests=$(field "$swapping" requests) non2xx=$(field "$swapping" non2xx)" \
  "socket_errors=$(field "$swapping" socket_errors) mixed=$(field "$swapping" mixed)" \
  "deploys=$(cat "$deploys_file") rps_swapping=$(field "$swapping" rps) rps_steady=$(field "$steady" rps)"
