#!/usr/bin/env bash
# Tables under load: wrk puts unique keys into the kv example's table through `graft serve` on
# loopback while releases kv-v1 (table schema 1) and kv-v2 (schema 2) are deployed alternately,
# so every deploy migrates every entry, up or down, with puts in flight. Meanwhile one slow
# request (a 60 s sleep on the sleepy plugin) stays in flight on another route, and a second
# wrk measures the latency of a third route (hello), which cannot reach kv either. Then every
# acknowledged key is read back.
#
# Run: scripts/kv-under-load.sh [--duration 30] [--interval-ms 100] [--connections N]
#                                [--durability memory|on-stop|interval|every-write] [--kill]
#   --durability: the table's (memory by default: what is measured is the migrations; a
#           persisted table is also written again to the store after each one);
#   --kill: the table is every-write; the server is SIGKILLed halfway through the run, started
#           again on the same data directory, and every key acknowledged before the kill is
#           read back from what it restored.
#   --connections: puts in flight at once (one wrk thread each); 2 by default, 16 with --kill,
#           where each put waits for its commit and concurrent puts share one (group commit).
#
# It ends with exactly one line:
#   puts=N ok=N non2xx=N keys=N lost=N migrations=N max_pause_ms=N other_route_p99_ms=N
# `puts` counts the puts answered, `ok` those answered 2xx (each key is known: wrk runs one
# connection per thread, so its n-th answer is for its n-th put), `keys` the keys the table
# holds at the end, `lost` the acknowledged keys not read back, `migrations` the table
# migrations of the deploys that went live, `max_pause_ms` the longest a deploy held kv's
# requests, `other_route_p99_ms` the 99th percentile latency of the hello route.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

duration=30 interval_ms=100 kill=false threads= durability=memory
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration=$2; shift 2 ;;
    --interval-ms) interval_ms=$2; shift 2 ;;
    --connections) threads=$2; shift 2 ;;
    --durability) durability=$2; shift 2 ;;
    --kill) kill=true; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$threads" ] || threads=$($kill && echo 16 || echo 2)
if [ "$duration" -gt 55 ]; then echo "--duration is at most 55 (the slow request sleeps 60 s)" >&2; exit 2; fi

need wrk
build release kv-v1 kv-v2 sleepy hello-v1
for v in v1 v2; do
  "$graft" pack "$work/$v" --name "$v" --complete \
    "$(lib "kv-$v")" "$(lib sleepy)" "$(lib hello-v1)" >/dev/null
done

$kill && durability=every-write
port_app=$port port_admin=$((port + 1))
cat >"$work/graft.toml" <<EOF
data_dir = "data"
release = "$work/v1"
listen = "127.0.0.1:$port_app"
migration_drain_ms = 1000
state_save_interval_ms = 1000

[admin]
listen = "127.0.0.1:$port_admin"

[[table]]
name = "kv.entries"
durability = "$durability"

[[route]]
method = "POST"
path = "/put"
export = "kv.put@1"
mode = "$($kill && echo blocking || echo inline)"

[[route]]
method = "POST"
path = "/get-many"
export = "kv.get-many@1"
mode = "blocking"

[[route]]
method = "POST"
path = "/count"
export = "kv.count@1"

[[route]]
method = "POST"
path = "/slow"
export = "sleep@1"

[[route]]
method = "POST"
path = "/hello"
export = "hello@1"
mode = "inline"
EOF
serve_work "$port_admin"

# The slow request, in flight the whole run.
curl -s -m 120 -o /dev/null -X POST -H 'Content-Type: application/json' -d 60000 \
  "http://127.0.0.1:$port_app/slow" &
pids+=($!)

# One connection per thread, so one request in flight per thread: each put is for key tID-n
# where n is one more than the answers so far, and the n-th answer is for it (wrk also calls
# request() once more, to check the script, and sends nothing: that call only repeats key 1).
# After `stop`, GETs of an unrouted path (404) fill the tail, so that wrk abandons reads, not
# puts.
cat >"$work/put.lua" <<'EOF'
local threads, next_id = {}, 1
function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end
function init(args)
  answered, ok, bad, failed, put = 0, 0, 0, "", false
  stop = os.time() + tonumber(args[1])
  headers = { ["Content-Type"] = "application/json" }
  tail = wrk.format("GET", "/kv-under-load/tail")
end
function request()
  put = os.time() < stop
  if not put then return tail end
  local n = answered + 1
  local body = string.format('{"key":"t%d-%d","value":"v%d"}', id, n, n)
  return wrk.format("POST", "/put", headers, body)
end
function response(status, headers, body)
  if not put then return end -- a tail read
  answered = answered + 1
  if status >= 200 and status <= 299 then ok = ok + 1
  else
    bad = bad + 1; failed = failed .. answered .. ","
    io.stderr:write(string.format("put t%d-%d answered %d: %s\n", id, answered, status, body))
  end
end
function done(summary, latency, requests)
  for _, t in ipairs(threads) do
    io.write(string.format("THREAD id=%d answered=%d ok=%d bad=%d failed=%s\n",
      t:get("id"), t:get("answered"), t:get("ok"), t:get("bad"), t:get("failed")))
  end
end
EOF
cat >"$work/hello.lua" <<'EOF'
wrk.method = "POST"
wrk.body = '"load"'
wrk.headers["Content-Type"] = "application/json"
function done(summary, latency, requests)
  io.write(string.format("P99 %.3f\n", latency:percentile(99) / 1000))
end
EOF


deploy_for=$duration
$kill && deploy_for=$((duration / 2))
deploy_alternately "$port_admin" "$deploy_for" "$interval_ms" kv.entries >"$work/deploys" &
deployer=$!
wrk -t1 -c2 -d"${duration}s" -s "$work/hello.lua" "http://127.0.0.1:$port_app/hello" \
  >"$work/hello.out" 2>&1 &
hello=$!
if $kill; then
  ( sleep $((duration / 2)); kill -KILL "$server" ) &
fi
# The tail (3 s) outlasts the longest a put can wait: one migration's drain (1 s).
wrk -t"$threads" -c"$threads" -d"$((duration + 3))s" -s "$work/put.lua" \
  "http://127.0.0.1:$port_app/put" -- "$duration" >"$work/put.out" 2>&1 || true
wait "$deployer" || true
wait "$hello" || true
read -r migrations max_pause <"$work/deploys"
p99=$(grep '^P99 ' "$work/hello.out" | cut -d' ' -f2)

if $kill; then
  wait "$server" 2>/dev/null || true
  echo "==> killed; starting again on the same data directory" >&2
  started=$(date +%s.%N)
  # Once more if its ports are not free yet (the kernel may still hold them for a moment).
  serve_work "$port_admin" 120 || { sleep 2; serve_work "$port_admin" 120; }
  echo "==> serving again after $(echo "$(date +%s.%N) - $started" | awk '{ printf "%.1f", $1 - $3 }') s" >&2
else
  # The slow request is still in flight: the migrations never waited for it.
  curl -s "http://127.0.0.1:$port_admin/status" | grep -q '"POST /slow"' \
    || { echo "the slow request was not in flight at the end" >&2; exit 1; }
fi

# Every acknowledged key, read back.
cat >"$work/readback.py" <<'PY'
import json, re, sys, urllib.request
port, out = sys.argv[1], sys.argv[2]
acked = []
for line in open(out):
    m = re.match(r"THREAD id=(\d+) answered=(\d+) ok=\d+ bad=\d+ failed=([\d,]*)", line)
    if not m:
        continue
    tid, answered = int(m[1]), int(m[2])
    failed = {int(n) for n in m[3].split(",") if n}
    acked += [(f"t{tid}-{n}", f"v{n}") for n in range(1, answered + 1) if n not in failed]
lost = 0
for at in range(0, len(acked), 5000):
    batch = acked[at:at + 5000]
    req = urllib.request.Request(f"http://127.0.0.1:{port}/get-many",
                                 data=json.dumps([k for k, _ in batch]).encode(),
                                 headers={"Content-Type": "application/json"})
    values = json.load(urllib.request.urlopen(req, timeout=60))
    missing = [(key, want, got) for (key, want), got in zip(batch, values) if got != want]
    for key, want, got in missing[:5]:
        print(f"lost: {key}: wanted {want!r}, read {got!r}", file=sys.stderr)
    lost += len(missing)
print(lost)
PY
lost=$(python3 "$work/readback.py" "$port_app" "$work/put.out")
keys=$(curl -s -X POST -H 'Content-Type: application/json' -d null "http://127.0.0.1:$port_app/count")
sum() { grep '^THREAD ' "$work/put.out" | tr ' ' '\n' | grep "^$1=" | awk -F= '{ s += $2 } END { print s + 0 }'; }
answered=$(sum answered) ok=$(sum ok) bad=$(sum bad)
echo "puts=$answered ok=$ok non2xx=$bad keys=$keys lost=$lost migrations=$migrations max_pause_ms=$max_pause other_route_p99_ms=$p99"
