#!/usr/bin/env bash
# A canary that crashes cannot take the service down: `graft serve` (the hello service,
# `isolation = "canary"`) takes wrk traffic on loopback while `crashy` rolls out as a 50%
# canary, and a request makes it crash: a segfault, then (a new rollout each) an abort and a
# stack overflow. The canary runs in a worker process: its crash fails the canary's requests
# in flight, aborts the rollout (the event names the signal), and the front, with stable,
# serves on under the same pid.
#
# Run: scripts/crash-canary.sh [--duration 4]     (seconds of load around each crash)
#
# It ends with one line:
#   crashes=3 aborted=3 signals=SIGSEGV,SIGABRT,SIGABRT front_pid_unchanged=1
#   stable_requests=N stable_non2xx=0 canary_requests=N canary_non2xx=N after_non2xx=0
# where stable_non2xx counts stable's failed answers under load (0: the crash cost stable
# nothing), canary_non2xx the canary's (those in flight when it crashed, and the crash itself),
# and after_non2xx the failed answers among 100 sent after each abort.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

duration=4
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration=$2; shift 2 ;;
    *) echo "usage: $0 [--duration SECONDS]" >&2; exit 2 ;;
  esac
done

need wrk
build release hello-v1 crashy
"$graft" pack "$work/v1" --name v1 --complete "$(lib hello-v1)" >/dev/null
"$graft" pack "$work/crashy" --name crashy "$(lib crashy)" >/dev/null

token=operators-force-the-canary
admin="http://127.0.0.1:$((port + 1))"
cat >"$work/graft.toml" <<EOF
data_dir = "data"
release = "v1"
listen = "127.0.0.1:$port"
isolation = "canary"

[admin]
listen = "127.0.0.1:$((port + 1))"

[rollout]
plan = "50:1h,100"
interval_ms = 100
force_token = "$token"
p99_slack_ms = 60000

[[route]]
method = "POST"
path = "/hello"
export = "hello@1"
timeout_ms = 2000
EOF
serve_work "$((port + 1))"
front=$server

cat >"$work/load.lua" <<'EOF'
-- Counts each side's answers and failures (canary answers carry x-graft-route: canary).
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args)
  stable, stable_bad, canary, canary_bad = 0, 0, 0, 0
  wrk.method = "POST"
  wrk.body = '"ops"'
  wrk.headers["Content-Type"] = "application/json"
end
function response(status, headers, body)
  if headers["x-graft-route"] == "canary" then
    canary = canary + 1
    if status ~= 200 then canary_bad = canary_bad + 1 end
  else
    stable = stable + 1
    if status ~= 200 then stable_bad = stable_bad + 1 end
  end
end
function done(summary, latency, requests)
  local s, sb, c, cb = 0, 0, 0, 0
  for _, t in ipairs(threads) do
    s = s + t:get("stable"); sb = sb + t:get("stable_bad")
    c = c + t:get("canary"); cb = cb + t:get("canary_bad")
  end
  local e = summary.errors
  io.write(string.format("RESULT stable=%d stable_bad=%d canary=%d canary_bad=%d socket_errors=%d\n",
    s, sb, c, cb, e.connect + e.read + e.write + e.timeout))
end
EOF
field() { echo "$1" | tr ' ' '\n' | grep "^$2=" | cut -d= -f2; }
rollout_field() { curl -s "$admin/rollout" | python3 -c "import json,sys; r=json.load(sys.stdin); $1"; }

crashes=0 aborted=0 signals="" stable=0 stable_bad=0 canary=0 canary_bad=0 after_bad=0 socket=0
for input in segfault abort stack-overflow; do
  "$graft" deploy "$work/crashy" --canary 50 --admin "$admin" >/dev/null
  wrk -t2 -c16 -d"${duration}s" -s "$work/load.lua" "http://127.0.0.1:$port/hello" >"$work/wrk.out" &
  load=$!
  sleep 1
  code=$(curl -s -o "$work/crash.json" -w '%{http_code}' -X POST -H 'content-type: application/json' \
    -H 'x-graft-route: canary' -H "x-graft-route-token: $token" -d "\"$input\"" "http://127.0.0.1:$port/hello")
  [ "$code" = 502 ] && crashes=$((crashes + 1))
  echo "$input: the crashing request answered $code $(cat "$work/crash.json")" >&2
  for _ in $(seq 1 300); do
    [ "$(rollout_field 'print(r["state"])')" = aborted ] && break
    sleep 0.01
  done
  message=$(rollout_field 'print(next((e["message"] for e in reversed(r["events"]) if e["event"] == "aborted"), ""))')
  echo "$input: $message" >&2
  if [ -n "$message" ]; then
    aborted=$((aborted + 1))
    signals="$signals${signals:+,}$(echo "$message" | grep -o 'SIG[A-Z]*' | head -n 1)"
  fi
  wait "$load"
  result=$(grep '^RESULT' "$work/wrk.out")
  stable=$((stable + $(field "$result" stable))) stable_bad=$((stable_bad + $(field "$result" stable_bad)))
  canary=$((canary + $(field "$result" canary))) canary_bad=$((canary_bad + $(field "$result" canary_bad)))
  socket=$((socket + $(field "$result" socket_errors)))
  for _ in $(seq 1 100); do
    code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'content-type: application/json' \
      -d '"after"' "http://127.0.0.1:$port/hello")
    [ "$code" = 200 ] || after_bad=$((after_bad + 1))
  done
done
unchanged=0
kill -0 "$front" 2>/dev/null && [ "$(curl -s -o /dev/null -w '%{http_code}' "$admin/status")" = 200 ] && unchanged=1
echo "crashes=$crashes aborted=$aborted signals=$signals front_pid_unchanged=$unchanged" \
  "stable_requests=$stable stable_non2xx=$stable_bad canary_requests=$canary canary_non2xx=$canary_bad" \
  "socket_errors=$socket after_non2xx=$after_bad"
