#!/usr/bin/env bash
# A fleet rollout measured: N `graft serve` hosts on loopback (the hello service, v1), each under
# its own wrk load, take hello v2 with `graft fleet rollout` (waves of 1, 2, 4, ... hosts). Then
# each host's rollout events say how long each step really took against its bake time: a step
# should pass within one analysis interval of its bake (plus the time to gather `min_requests`
# canary requests, which this load gives in well under that).
#
# Run: scripts/fleet-rollout.sh [--hosts 8] [--plan 50:1s,100] [--interval-ms 250]
#      [--min-requests 50]          (loopback only; everything under a temp dir)
#
# Prints one line per host and step, then exactly one last line:
#   hosts=N steps=S bake_ms=... max_over_bake_ms=MS max_over_in_intervals=X fleet_s=S promoted=N
# where max_over_bake_ms is the longest time a step ran past its bake, on any host.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

hosts=8 plan="50:1s,100" interval_ms=250 min_requests=50
while [ $# -gt 0 ]; do
  case "$1" in
    --hosts) hosts=$2; shift 2 ;;
    --plan) plan=$2; shift 2 ;;
    --interval-ms) interval_ms=$2; shift 2 ;;
    --min-requests) min_requests=$2; shift 2 ;;
    *) echo "usage: $0 [--hosts N] [--plan STEPS] [--interval-ms MS] [--min-requests N]" >&2; exit 2 ;;
  esac
done

need wrk
build release hello-v1 hello-v2
"$graft" pack "$work/v1" --name v1 --complete "$(lib hello-v1)" >/dev/null
"$graft" pack "$work/v2" --name v2 --complete "$(lib hello-v2)" >/dev/null

cat >"$work/hello.lua" <<'EOF'
wrk.method = "POST"
wrk.body = '"you"'
wrk.headers["content-type"] = "application/json"
EOF

: >"$work/hosts.toml"
for i in $(seq 0 $((hosts - 1))); do
  app=$((port + 2 * i)) admin=$((port + 2 * i + 1))
  mkdir -p "$work/h$i"
  cat >"$work/h$i/graft.toml" <<EOF
data_dir = "data"
release = "../v1"
listen = "127.0.0.1:$app"

[admin]
listen = "127.0.0.1:$admin"

[rollout]
interval_ms = $interval_ms
min_requests = $min_requests
# Eight servers and eight load generators on this machine's cores: queueing sets p99.
p99_slack_ms = 50

[[route]]
method = "POST"
path = "/hello"
export = "hello@1"
EOF
  (cd "$work/h$i" && RUST_LOG=warn exec "$graft" serve --config graft.toml >serve.log 2>&1) &
  pids+=($!)
  printf '[[host]]\nname = "h%s"\nadmin = "http://127.0.0.1:%s"\n\n' "$i" "$admin" >>"$work/hosts.toml"
done
for i in $(seq 0 $((hosts - 1))); do
  wait_for "http://127.0.0.1:$((port + 2 * i + 1))/status" 30
done

# Load on every host for as long as the rollout may take (it is stopped once it is done).
for i in $(seq 0 $((hosts - 1))); do
  wrk -t1 -c2 -d120s -s "$work/hello.lua" "http://127.0.0.1:$((port + 2 * i))/hello" \
    >"$work/wrk$i.out" 2>&1 &
  pids+=($!)
done
sleep 1

echo "==> graft fleet rollout --plan $plan ($hosts hosts, analysis every ${interval_ms} ms)"
started=$(date +%s.%N)
"$graft" fleet rollout --hosts "$work/hosts.toml" --plan "$plan" --timeout 100 "$work/v2" \
  >"$work/fleet.out" 2>&1 || { cat "$work/fleet.out" >&2; exit 1; }
ended=$(date +%s.%N)
grep -E '^(wave|  )' "$work/fleet.out" | head -n 40 || true

# Each host's events: started, step..., promoted; a step ends at the next event.
for i in $(seq 0 $((hosts - 1))); do
  curl -s "http://127.0.0.1:$((port + 2 * i + 1))/rollout" >"$work/rollout$i.json"
done
python3 - "$work" "$hosts" "$plan" "$interval_ms" "$started" "$ended" <<'EOF'
import json, sys
work, hosts, plan, interval_ms, started, ended = sys.argv[1:]
hosts, interval_ms = int(hosts), int(interval_ms)
over, promoted, steps = [], 0, 0
rollouts = [json.load(open(f"{work}/rollout{i}.json")) for i in range(hosts)]
for i, r in enumerate(rollouts):
    marks = [e for e in r["events"] if e["event"] in ("started", "step", "promoted", "aborted")]
    promoted += r["state"] == "promoted"
    for n, (a, b) in enumerate(zip(marks, marks[1:])):
        bake = int(r["plan"][n]["bake_ms"])
        took = int(b["at_ms"] - a["at_ms"])
        over.append(took - bake)
        steps = max(steps, n + 1)
        print(f"h{i} step {n + 1} ({r['plan'][n]['weight']}%): bake {bake} ms, took {took} ms "
              f"({took - bake:+d} ms), then {b['event']}")
# Waves of 1, 2, 4, ... hosts (the last takes what is left), as `graft fleet rollout` makes them:
# how far apart its hosts' canaries started (the fleet deploys them one after another) and how
# long the wave took, from its first canary to its last promotion.
waves, at, size = [], 0, 1
while at < hosts:
    waves.append(range(at, min(at + size, hosts)))
    at, size = at + size, size * 2
firsts = {}
for i, r_i in enumerate(rollouts):
    ev = {e["event"]: e["at_ms"] for e in r_i["events"]}
    firsts[i] = (ev.get("started"), ev.get("promoted") or ev.get("aborted"))
for n, wave in enumerate(waves):
    starts = [firsts[i][0] for i in wave]
    ends = [firsts[i][1] for i in wave]
    print(f"wave {n + 1} ({len(wave)} hosts): canaries started over {max(starts) - min(starts)} ms, "
          f"first start to last promotion {max(ends) - min(starts)} ms")
bakes = ",".join(str(int(s["bake_ms"])) for s in r["plan"])
worst = max(over)
print(f"hosts={hosts} steps={steps} bake_ms={bakes} interval_ms={interval_ms} "
      f"max_over_bake_ms={worst} max_over_in_intervals={worst / interval_ms:.2f} "
      f"fleet_s={float(ended) - float(started):.1f} promoted={promoted}")
EOF
