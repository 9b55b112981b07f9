#!/usr/bin/env bash
# The swap-under-load proof: wrk drives `graft serve` (the foo/bar/frob service) on loopback
# while releases v1 and v2 are deployed alternately; a Lua script checks every response.
#
# Run: scripts/swap-under-load.sh [--duration 30] [--interval-ms 50] [--connections 32]
#                                 [--threads 2] [--baseline restart|static]
#                                 [--unload-policy keep-history|when-drained|never]
#
# The same load runs steady (no deploys) and swapping, --duration seconds each, in alternating
# windows of about 5 s against the same server, so that drift in the machine's speed weighs on
# both alike. One request in ten is slow (foo pauses 5 ms between its frob call and its bar
# call), so requests straddle swaps. With --baseline restart, the swapping windows restart the
# service as a process on each deploy instead (what people do without graft). It ends with
# exactly one line:
#   requests=N non2xx=N socket_errors=N mixed=N deploys=N rps_swapping=N rps_steady=N
# where `mixed` counts responses whose foo, bar and frob major versions disagree.
#
# With --baseline static there are no deploys: windows alternate between `graft serve` (v1) and
# the same three functions compiled into one plain axum binary (tests/static-baseline), every
# request fast (`/foo`), and it ends with
#   requests=N non2xx=N socket_errors=N mixed=N rps_graft=N rps_static=N ratio=R
# (requests and errors summed over both servers; ratio = rps_graft / rps_static).
#
# With --isolation all|canary there are no deploys either: windows alternate between two
# `graft serve` of v1 that differ only in `isolation` (MODE, and "none"), every request fast,
# and it ends with
#   requests=N non2xx=N socket_errors=N mixed=N rps_isolated=N rps_none=N ratio=R
# (ratio = rps_isolated / rps_none). Under "all" every request is forwarded to the worker
# process running v1; under "canary" (no rollout under way) every request stays in the front,
# which is what stable pays for the canary's isolation.
#
# With --service notes the service is the notes example instead (routes that ship with the
# release, notes in a host table): every request is `GET /notes/1` (a path parameter, headers,
# JSON out), or every tenth `GET /stats`, a route only notes-v2 declares. Deploys alternate
# notes-v2 (adds /stats, changes GET /notes/{id}) and notes-v1 (removes /stats); `mixed` counts
# answers whose route and code disagree (a /stats or a v2-shaped note from a build that lacks
# it, or the other way round), and only /stats may answer 404. With --baseline static it is
# compared with the same routes in plain axum (tests/static-baseline/notes.rs).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

duration=30 interval_ms=50 connections=32 threads=2 baseline=graft unload_policy=keep-history service=foo
isolation=none
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration=$2; shift 2 ;;
    --interval-ms) interval_ms=$2; shift 2 ;;
    --connections) connections=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --baseline) baseline=$2; shift 2 ;;
    --unload-policy) unload_policy=$2; shift 2 ;;
    --service) service=$2; shift 2 ;;
    --isolation) isolation=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
case "$baseline" in graft|restart|static) ;; *) echo "--baseline takes: restart, static" >&2; exit 2 ;; esac
case "$service" in foo|notes) ;; *) echo "--service takes: foo, notes" >&2; exit 2 ;; esac
case "$isolation" in none|canary|all) ;; *) echo "--isolation takes: canary, all" >&2; exit 2 ;; esac
if [ "$isolation" != none ] && { [ "$service" != foo ] || [ "$baseline" != graft ]; }; then
  echo "--isolation compares two graft servers of the foo service; no --baseline, no --service" >&2; exit 2
fi
if [ "$service" = notes ] && [ "$baseline" = restart ]; then
  echo "--service notes has no restart baseline" >&2; exit 2
fi

need wrk
if [ "$service" = foo ]; then
  pack_foo_releases
else
  build release notes-v1 notes-v2
  for v in v1 v2; do
    "$graft" pack "$work/$v" --name "notes-$v" --complete "$(lib "notes-$v")" >/dev/null
  done
fi

port_app=$port
port_admin=$((port + 1))
# config NAME RELEASE [TOP_LINES]: a graft.toml with its own data dir, on the loopback ports
# $port_app and $port_admin.
config() {
  if [ "$service" = notes ]; then
    printf 'data_dir = "data-%s"\nrelease = "%s"\nlisten = "127.0.0.1:%s"\ndrain_timeout_ms = 10000\nunload_policy = "%s"\n\n[admin]\nlisten = "127.0.0.1:%s"\n' \
      "$1" "$2" "$port_app" "$unload_policy" "$port_admin" >"$work/$1.toml"
  else
    {
      foo_config "data-$1" "$2" "drain_timeout_ms = 10000
unload_policy = \"$unload_policy\"
${3:-}"
      printf '\n[[route]]\nmethod = "POST"\npath = "/slow"\nexport = "foo@1"\n'
    } >"$work/$1.toml"
  fi
  echo "$work/$1.toml"
}

# seed PORT: the note the notes load reads.
seed() {
  curl -sf -o /dev/null -X POST -H 'content-type: application/json' \
    -d '{"title": "seed", "body": "three short words"}' "http://127.0.0.1:$1/notes"
}

# start CONFIG: starts graft serve in the background; waits until it serves.
start() {
  RUST_LOG=warn "$graft" serve --config "$1" >>"$work/serve.log" 2>&1 &
  pids+=($!)
  server=$!
  for _ in $(seq 1 500); do
    curl -s -o /dev/null "http://127.0.0.1:$port_admin/status" && return 0
    sleep 0.01
  done
  echo "graft serve did not start; log:" >&2; cat "$work/serve.log" >&2; exit 1
}

# What both scripts end with: one RESULT line, summed over wrk's threads (each counts
# `mixed` and `bad`: answers other than the script expects).
cat >"$work/done.lua" <<'EOF'
function done(summary, latency, requests)
  local m, b = 0, 0
  for _, t in ipairs(threads) do m = m + t:get("mixed"); b = b + t:get("bad") end
  local e = summary.errors
  io.write(string.format("RESULT requests=%d non2xx=%d socket_errors=%d mixed=%d duration_us=%d\n",
    summary.requests, b, e.connect + e.read + e.write + e.timeout, m, summary.duration))
end
EOF

cat >"$work/check.lua" <<'EOF'
-- One request in SLOW_EVERY (the script's argument; 0 for none) is slow, the others fast;
-- every response must be 2xx and unmixed.
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args)
  n, mixed, bad = 0, 0, 0
  slow_every = tonumber(args[1]) or 10
  wrk.headers["Content-Type"] = "application/json"
end
function request()
  n = n + 1
  if slow_every > 0 and n % slow_every == 0 then
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
EOF

cat >"$work/notes.lua" <<'EOF'
-- GET /notes/1, or every STATS_EVERY-th request (the argument; 0 for none) GET /stats. A
-- note from notes-v2 (x-notes-build: 2) has a word count, one from v1 has none; /stats is
-- served only by v2 (200, its build header) and answers 404 (no such route) elsewhere.
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args)
  n, mixed, bad = 0, 0, 0
  stats_every = tonumber(args[1]) or 10
end
function request()
  n = n + 1
  if stats_every > 0 and n % stats_every == 0 then return wrk.format("GET", "/stats") end
  return wrk.format("GET", "/notes/1")
end
function response(status, headers, body)
  local v2 = headers["x-notes-build"] == "2"
  if body:find('"notes":', 1, true) then
    if status ~= 200 or not v2 then mixed = mixed + 1 end
    return
  end
  if status == 404 then
    if not body:find("no such route", 1, true) then bad = bad + 1 end
    return
  end
  if status < 200 or status > 299 then bad = bad + 1; return end
  local counted = body:find('"words":', 1, true) ~= nil
  if counted ~= v2 then mixed = mixed + 1 end
end
EOF

cat "$work/done.lua" >>"$work/check.lua"
cat "$work/done.lua" >>"$work/notes.lua"

cat >"$work/deployer.py" <<'PY'
# deployer.py PORT WORK SECONDS INTERVAL_MS COUNT_FILE: deploys v2 and v1 alternately through
# one keep-alive connection (a process per deploy would cost the server's CPU more than the
# deploys do). COUNT_FILE holds the number of deploys so far; the alternation carries on from it.
import json, socket, sys, time
port, work, duration, interval_ms, count_file = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
# Both requests are built once; the loop only writes them and reads the answers.
def request(release):
    body = json.dumps({"dir": f"{work}/{release}"}).encode()
    head = f"POST /deploy HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body
requests = [request("v2"), request("v1")]
conn = socket.create_connection(("127.0.0.1", int(port)))
buffer = b""
def response():
    global buffer
    while b"\r\n\r\n" not in buffer:
        buffer += conn.recv(65536)
    head, buffer = buffer.split(b"\r\n\r\n", 1)
    length = next(int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:"))
    while len(buffer) < length:
        buffer += conn.recv(65536)
    body, buffer = buffer[:length], buffer[length:]
    return int(head.split(b" ")[1]), body
ok = int(open(count_file).read())
deadline = time.monotonic() + duration
while time.monotonic() < deadline:
    conn.sendall(requests[ok % 2])
    status, body = response()
    if status == 200:
        ok += 1
    else:
        print(f"deploy refused: {body.decode()}", file=sys.stderr)
    time.sleep(interval_ms / 1000)
open(count_file, "w").write(str(ok))
PY

# load SECONDS [PORT [SLOW_EVERY]]: one wrk run; prints its RESULT line.
load() {
  local script=$work/check.lua
  [ "$service" = foo ] || script=$work/notes.lua
  wrk -t"$threads" -c"$connections" -d"${1}s" -s "$script" \
    "http://127.0.0.1:${2:-$port_app}" -- "${3:-10}" | grep '^RESULT'
}
field() { echo "$1" | tr ' ' '\n' | grep "^$2=" | cut -d= -f2; }
# add TOTALS RESULT: sums the fields of a RESULT line into a "k=v ..." line.
add() {
  local out="" k
  for k in requests non2xx socket_errors mixed duration_us; do
    out="$out $k=$(( $(field "$1" "$k") + $(field "$2" "$k") ))"
  done
  echo "$out"
}

# Steady and swapping windows alternate, so that a machine slowing down or speeding up during
# the run (other tenants, frequency changes) weighs on both figures alike.
windows=$(( duration >= 10 ? duration / 5 : 1 ))
window=$(( duration / windows ))
zero="requests=0 non2xx=0 socket_errors=0 mixed=0 duration_us=0"
steady=$zero swapping=$zero
deploys_file="$work/deploys"
echo 0 >"$deploys_file"
# compare A PORT_A B PORT_B: the load on two servers, one uncounted second each first (fresh
# processes fault in pages and grow buffers), then the pairs of windows in ABBA order, so that a
# machine steadily speeding up or slowing down favours neither; prints the comparison line
# (rps_A, rps_B, ratio = rps_A / rps_B) and exits.
compare() {
  local a_load=$zero b_load=$zero i both rps_a rps_b
  load 1 "$2" 0 >/dev/null
  load 1 "$4" 0 >/dev/null
  for i in $(seq 1 "$windows"); do
    if [ $((i % 2)) -eq 1 ]; then
      a_load=$(add "$a_load" "$(load "$window" "$2" 0)")
      b_load=$(add "$b_load" "$(load "$window" "$4" 0)")
    else
      b_load=$(add "$b_load" "$(load "$window" "$4" 0)")
      a_load=$(add "$a_load" "$(load "$window" "$2" 0)")
    fi
  done
  both=$(add "$a_load" "$b_load")
  rps_a=$(( $(field "$a_load" requests) * 1000000 / $(field "$a_load" duration_us) ))
  rps_b=$(( $(field "$b_load" requests) * 1000000 / $(field "$b_load" duration_us) ))
  echo "requests=$(field "$both" requests) non2xx=$(field "$both" non2xx)" \
    "socket_errors=$(field "$both" socket_errors) mixed=$(field "$both" mixed)" \
    "rps_$1=$rps_a rps_$3=$rps_b" \
    "ratio=$(awk -v a="$rps_a" -v b="$rps_b" 'BEGIN { printf "%.3f", a / b }')"
  exit 0
}

if [ "$baseline" = static ]; then
  echo "$windows graft and $windows static windows of ${window}s" >&2
  cargo build --release --quiet -p static-baseline
  port_static=$((port + 2))
  start "$(config graft "$work/v1")"
  "$target/static-baseline" "127.0.0.1:$port_static" >>"$work/static.log" 2>&1 &
  pids+=($!)
  wait_for "http://127.0.0.1:$port_static/"
  if [ "$service" = notes ]; then seed "$port_app"; seed "$port_static"; fi
  compare graft "$port_app" static "$port_static"
fi

if [ "$isolation" != none ]; then
  echo "$windows isolation=$isolation and $windows isolation=none windows of ${window}s" >&2
  port_isolated=$port_app admin_isolated=$port_admin
  port_none=$((port + 2)) admin_none=$((port + 3))
  # The in-process server first: the isolated one's worker binds ports of the kernel's choosing,
  # which could otherwise be the very ports this script picked for the other.
  port_app=$port_none port_admin=$admin_none
  start "$(config none "$work/v1")"
  port_app=$port_isolated port_admin=$admin_isolated
  start "$(config isolated "$work/v1" "isolation = \"$isolation\"")"
  workers=$(curl -s "http://127.0.0.1:$admin_isolated/status" | python3 -c 'import json,sys; print(len([w for w in json.load(sys.stdin).get("workers", []) if w["state"] == "serving"]))')
  echo "workers serving under isolation=$isolation: $workers" >&2
  compare isolated "$port_isolated" none "$port_none"
fi

echo "$windows steady and $windows swapping windows of ${window}s, a $([ "$baseline" = graft ] && echo deploy || echo restart) every ${interval_ms} ms" >&2
if [ "$baseline" = graft ]; then
  start "$(config swap "$work/v1")"
  if [ "$service" = notes ]; then seed "$port_app"; fi
  for _ in $(seq 1 "$windows"); do
    steady=$(add "$steady" "$(load "$window")")
    python3 "$work/deployer.py" "$port_admin" "$work" "$window" "$interval_ms" "$deploys_file" &
    deployer=$!
    swapping=$(add "$swapping" "$(load "$window")")
    wait "$deployer"
  done
  kill -TERM "$server"; wait "$server" || true
else
  v1_config=$(config restart-v1 "$work/v1")
  v2_config=$(config restart-v2 "$work/v2")
  start "$v1_config"
  echo "$server" >"$work/server.pid"
  for _ in $(seq 1 "$windows"); do
    steady=$(add "$steady" "$(load "$window")")
    # Restart the service as a process on each "deploy"; the last one started keeps serving.
    (
      deadline=$((SECONDS + window)); i=$(cat "$deploys_file")
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
    ) &
    restarter=$!
    swapping=$(add "$swapping" "$(load "$window")")
    wait "$restarter"
  done
  kill -TERM "$(cat "$work/server.pid")" 2>/dev/null || true
fi

rps() { echo $(( $(field "$1" requests) * 1000000 / $(field "$1" duration_us) )); }
echo "requests=$(field "$swapping" requests) non2xx=$(field "$swapping" non2xx)" \
  "socket_errors=$(field "$swapping" socket_errors) mixed=$(field "$swapping" mixed)" \
  "deploys=$(cat "$deploys_file") rps_swapping=$(rps "$swapping") rps_steady=$(rps "$steady")"
