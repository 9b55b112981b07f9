#!/usr/bin/env bash
# Staged rollouts under load: `graft serve` (the hello service) takes wrk traffic on loopback
# while a release rolls out as a canary. First a good release (hello v2): the canary steps up
# through the plan and is promoted. Then a bad one (hello-flaky, failing one call in five): the
# analysis aborts it on its own. Requests are sticky by an x-user header; the Lua script counts
# failures on each side (the x-graft-route header names the canary's answers).
#
# Run: scripts/rollout-demo.sh [--plan 10:3s,50:3s,100:2s] [--duration 25]
#
# It prints each change of step and weight as it happens, then a last line per rollout:
#   good: promoted ... stable_failures=0 ...      bad: aborted ... stable_failures=0 ...
set -euo pipefail
. "$(dirname "$0")/lib.sh"

plan="10:3s,50:3s,100:2s" duration=25
while [ $# -gt 0 ]; do
  case "$1" in
    --plan) plan=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    *) echo "usage: $0 [--plan STEPS] [--duration SECONDS]" >&2; exit 2 ;;
  esac
done

need wrk
build release hello-v1 hello-v2 hello-flaky
"$graft" pack "$work/v1" --name v1 --complete "$(lib hello-v1)" >/dev/null
"$graft" pack "$work/v2" --name v2 --complete "$(lib hello-v2)" >/dev/null
"$graft" pack "$work/bad" --name bad --complete "$(lib hello-flaky)" >/dev/null

admin="http://127.0.0.1:$((port + 1))"
cat >"$work/graft.toml" <<EOF
data_dir = "data"
release = "v1"
listen = "127.0.0.1:$port"

[admin]
listen = "127.0.0.1:$((port + 1))"

[rollout]
plan = "$plan"
sticky_header = "x-user"
min_requests = 200
interval_ms = 250
# wrk saturates this machine: queueing, not code, sets p99 on both sides, within a few ms.
p99_slack_ms = 25

[[route]]
method = "POST"
path = "/hello"
export = "hello@1"
EOF
RUST_LOG=warn "$graft" serve --config "$work/graft.toml" >"$work/serve.log" 2>&1 &
pids+=($!)
wait_for "$admin/status"

cat >"$work/sides.lua" <<'EOF'
-- Users 0..9999 in turn, each with its own x-user key; failures counted per side.
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args)
  n, stable, canary, stable_failed, canary_failed = math.random(0, 9999), 0, 0, 0, 0
end
function request()
  n = (n + 1) % 10000
  return wrk.format("POST", "/hello",
    { ["Content-Type"] = "application/json", ["x-user"] = "user-" .. n }, '"you"')
end
function response(status, headers, body)
  local failed = status < 200 or status > 299
  if headers["x-graft-route"] == "canary" then
    canary = canary + 1
    if failed then canary_failed = canary_failed + 1 end
  else
    stable = stable + 1
    if failed then stable_failed = stable_failed + 1 end
  end
end
function done(summary, latency, requests)
  local s, c, sf, cf = 0, 0, 0, 0
  for _, t in ipairs(threads) do
    s = s + t:get("stable"); c = c + t:get("canary")
    sf = sf + t:get("stable_failed"); cf = cf + t:get("canary_failed")
  end
  local e = summary.errors
  io.write(string.format("requests=%d stable=%d canary=%d stable_failures=%d canary_failures=%d socket_errors=%d\n",
    summary.requests, s, c, sf, cf, e.connect + e.read + e.write + e.timeout))
end
EOF

# rollout NAME RELEASE: runs wrk for $duration seconds while RELEASE rolls out; prints every
# change of step or weight, and a last line with the verdict and wrk's counts.
rollout() {
  local name=$1 release=$2
  echo "==> $name: graft deploy $release --rollout (plan $plan) under wrk load"
  wrk -t2 -c16 -d"${duration}s" -s "$work/sides.lua" "http://127.0.0.1:$port" >"$work/wrk-$name" &
  local wrk_pid=$! started=$SECONDS
  sleep 1
  "$graft" deploy "$release" --rollout --admin "$admin" >/dev/null
  local last="" state=running status line
  while [ "$state" = running ] || [ "$state" = paused ]; do
    sleep 0.2
    status=$("$graft" rollout status --json --admin "$admin")
    state=$(echo "$status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])')
    line=$(echo "$status" | python3 -c '
import json, sys
r = json.load(sys.stdin)
step, steps, weight = r["step"], len(r["plan"]), r["weight"]
print(f"step {step}/{steps} weight {weight}%")')
    if [ "$line" != "$last" ] && [ "$state" = running ]; then
      echo "  t=$((SECONDS - started))s $line"
      last=$line
    fi
    if [ $((SECONDS - started)) -gt $((duration + 30)) ]; then echo "  the rollout did not end" >&2; exit 1; fi
  done
  wait "$wrk_pid"
  local verdict
  verdict=$(echo "$status" | python3 -c '
import json, sys
r = json.load(sys.stdin)
event = r["events"][-1]
state, message = r["state"], event["message"]
requests, errors = event["canary"]["requests"], event["canary"]["errors"]
print(f"{state}: {message} (canary window: {requests} requests, {errors} errors)")')
  echo "  $verdict"
  echo "$name: $verdict; wrk: $(grep "^requests=" "$work/wrk-$name")"
}

rollout good "$work/v2"
rollout bad "$work/bad"
