#!/usr/bin/env bash
# State under load: wrk increments the counter example through `graft serve` on loopback while
# releases counter-v1 (state schema 1) and counter-v2 (schema 2) are deployed alternately, so
# every deploy migrates the state, up or down, with requests in flight. Then it reads the
# total and compares it with the increments that were answered 2xx.
#
# Run: scripts/state-under-load.sh [--duration 20] [--interval-ms 100] [--connections 32]
#
# It ends with exactly one line:
#   requests=N ok=N non2xx=N counter=N lost=N migrations=N max_pause_ms=N
# where `requests` counts the increments answered, `ok` those answered 2xx, `lost = ok - counter`, and `max_pause_ms` is the longest
# time a deploy held new requests at the boundary (from the deploy reports).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

duration=20 interval_ms=100 connections=32 threads=2
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration=$2; shift 2 ;;
    --interval-ms) interval_ms=$2; shift 2 ;;
    --connections) connections=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

need wrk
build release counter-v1 counter-v2
"$graft" pack "$work/v1" --name v1 --complete "$(lib counter-v1)" >/dev/null
"$graft" pack "$work/v2" --name v2 --complete "$(lib counter-v2)" >/dev/null

port_app=$port port_admin=$((port + 1))
cat >"$work/graft.toml" <<EOF
data_dir = "data"
release = "$work/v1"
listen = "127.0.0.1:$port_app"
migration_drain_ms = 1000

[admin]
listen = "127.0.0.1:$port_admin"

[[route]]
method = "POST"
path = "/incr"
export = "incr@1"

[[route]]
method = "POST"
path = "/total"
export = "total@1"
EOF
serve_work "$port_admin"

# Each connection sends increments until `stop`, then GETs to an unrouted path (404) for the
# tail of the run: wrk abandons the requests in flight when it ends, and those are then reads,
# so every increment sent was answered and `ok` is exact.
cat >"$work/incr.lua" <<'EOF'
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args)
  ok, bad = 0, 0
  stop = os.time() + tonumber(args[1])
  incr = wrk.format("POST", "/incr", { ["Content-Type"] = "application/json" }, "1")
  tail = wrk.format("GET", "/state-under-load/tail")
end
function request()
  if os.time() < stop then return incr end
  return tail
end
function response(status, headers, body)
  if status >= 200 and status <= 299 then ok = ok + 1
  elseif status ~= 404 then bad = bad + 1 end
end
function done(summary, latency, requests)
  local o, b = 0, 0
  for _, t in ipairs(threads) do o = o + t:get("ok"); b = b + t:get("bad") end
  local e = summary.errors
  io.write(string.format("RESULT requests=%d ok=%d non2xx=%d socket_errors=%d\n",
    o + b, o, b, e.connect + e.read + e.write + e.timeout))
end
EOF


deploy_alternately "$port_admin" "$duration" "$interval_ms" >"$work/deploys" &
deployer=$!
# The tail (3 s) outlasts the longest a response can wait: one migration's drain (1 s).
result=$(wrk -t"$threads" -c"$connections" -d"$((duration + 3))s" -s "$work/incr.lua" \
  "http://127.0.0.1:$port_app/incr" -- "$duration" | grep '^RESULT')
wait "$deployer"
read -r migrations max_pause <"$work/deploys"
counter=$(curl -s -X POST -H 'Content-Type: application/json' -d 0 "http://127.0.0.1:$port_app/total")
field() { echo "$result" | tr ' ' '\n' | grep "^$1=" | cut -d= -f2; }
ok=$(field ok)
if [ "$(field socket_errors)" != 0 ]; then
  echo "wrk saw $(field socket_errors) socket errors (unanswered or failed connections)" >&2
fi
echo "requests=$(field requests) ok=$ok non2xx=$(field non2xx) counter=$counter lost=$((ok - counter)) migrations=$migrations max_pause_ms=$max_pause"
