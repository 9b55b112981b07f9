#!/usr/bin/env bash
# Soak: `graft serve` under `unload_policy = "when-drained"` deploys two releases alternately
# (foo/bar/frob v1 and v2), with a request between every two deploys that must answer 200 from
# the release just deployed. Every deploy loads three libraries and, once the previous
# generation drains, closes three: what this proves is that nothing grows with reloads (memory,
# mappings) and nothing fails.
#
# Run: scripts/soak.sh [--deploys 10000] [--warmup 200]
#
# RSS and the mapping count are read from /proc after `--warmup` deploys (allocator arenas and
# caches settle first) and after the last one; bytes_per_reload = (rss_end - rss_start) / deploys.
# A line before the last gives the mappings of staged plugin libraries alone (all mappings also
# count thread stacks and malloc arenas, a few of which come and go), and the median of the
# heap's (RssAnon's) growth per reload over the four quarters of the run: a leak grows every
# quarter, while a new malloc arena or thread stack is a step in one of them, which moves
# bytes_per_reload by over 100 in a run of 2,000 deploys but not the median.
# Plugins allocate nothing per load that outlives their library (docs/architecture.md, "what a
# reload leaves behind"): bytes_per_reload is noise, a few dozen at most over thousands of deploys.
#
# It ends with exactly one line:
#   deploys=N failures=N rss_start_kb=N rss_end_kb=N bytes_per_reload=N maps_start=N maps_end=N
set -euo pipefail
. "$(dirname "$0")/lib.sh"

deploys=10000 warmup=200
while [ $# -gt 0 ]; do
  case "$1" in
    --deploys) deploys=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

pack_foo_releases

port_app=$port port_admin=$((port + 1))
foo_config data "$work/v1" 'unload_policy = "when-drained"' >"$work/graft.toml"
serve_work "$port_admin"

cat >"$work/soak.py" <<'PY'
import http.client, json, statistics, sys, time
pid, port_app, port_admin, work = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
deploys, warmup = int(sys.argv[5]), int(sys.argv[6])
admin = http.client.HTTPConnection("127.0.0.1", port_admin, timeout=30)
app = http.client.HTTPConnection("127.0.0.1", port_app, timeout=30)

def rss_kb(field="VmRSS"):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

def maps():
    return sum(1 for _ in open(f"/proc/{pid}/maps"))

def plugin_maps():
    # Mappings of staged plugin copies: what a library never unloaded would leave.
    return sum(1 for line in open(f"/proc/{pid}/maps") if "/staged/" in line)

def settled():
    # The unloader closes the last generation's libraries once it drains: let it finish.
    time.sleep(1)
    return rss_kb(), maps(), plugin_maps()

failures = 0
def one(i):
    global failures
    release = "v2" if i % 2 == 0 else "v1"
    admin.request("POST", "/deploy", json.dumps({"dir": f"{work}/{release}"}),
                  {"Content-Type": "application/json"})
    deployed = admin.getresponse()
    deployed.read()
    app.request("POST", "/foo", '{"a": 1}', {"Content-Type": "application/json"})
    answer = app.getresponse()
    body = answer.read()
    expected = "2.0.0" if release == "v2" else "1.0.0"
    if deployed.status != 200 or answer.status != 200 or json.loads(body)["foo"] != expected:
        failures += 1
        print(f"deploy {i}: deploy {deployed.status}, /foo {answer.status} {body[:200]!r}", file=sys.stderr)

for i in range(warmup):
    one(i)
rss_start, maps_start, plugins_start = settled()
# The heap (RssAnon) at each quarter, settled: a leak per reload grows it in every quarter,
# a malloc arena or thread stack appearing once grows it in one.
quarter = max(deploys // 4, 1)
anon = [rss_kb("RssAnon")]
started = time.monotonic()
paused = 0.0
for i in range(warmup, warmup + deploys):
    one(i)
    done = i - warmup + 1
    if done % quarter == 0 and len(anon) < 5:
        before = time.monotonic()
        settled()
        paused += time.monotonic() - before
        anon.append(rss_kb("RssAnon"))
        print(f"after {done} deploys: rss_kb={rss_kb()} anon_kb={anon[-1]} maps={maps()}", file=sys.stderr)
took = time.monotonic() - started - paused
rss_end, maps_end, plugins_end = settled()
rates = [(b - a) * 1024 // quarter for a, b in zip(anon, anon[1:])]
print(f"{deploys} deploys in {took:.1f} s ({deploys / took:.0f}/s)", file=sys.stderr)
# All mappings also count thread stacks and malloc arenas, which come and go; these are the
# plugins' own (one release's libraries, whatever the number of deploys).
# The median quarter's heap growth per reload is what a leak would show, without the steps.
print(f"plugin_maps_start={plugins_start} plugin_maps_end={plugins_end} "
      f"median_quarter_bytes_per_reload={int(statistics.median(rates or [0]))}")
per_reload = (rss_end - rss_start) * 1024 // deploys
print(f"deploys={deploys} failures={failures} rss_start_kb={rss_start} rss_end_kb={rss_end} "
      f"bytes_per_reload={per_reload} maps_start={maps_start} maps_end={maps_end}")
PY
python3 "$work/soak.py" "$server" "$port_app" "$port_admin" "$work" "$deploys" "$warmup"
