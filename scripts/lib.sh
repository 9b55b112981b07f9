# Shared by the scripts in this folder; each sources it right after `set -euo pipefail`:
#   . "$(dirname "$0")/lib.sh"
# It gives them:
#   - the repository as the working directory, and $root;
#   - $work, a temp dir, removed on exit, when every pid in $pids is killed too;
#   - build PROFILE CRATE...: builds the graft binary and these plugin crates (PROFILE is
#     release or debug), and sets $target (the profile's output directory) and $graft;
#   - lib CRATE: the library a plugin crate built, in $target;
#   - pack_foo_releases: builds graft and the foo/bar/frob plugins (release) and packs them as
#     two complete releases, $work/v1 and $work/v2;
#   - foo_config DATA_DIR RELEASE [TOP_LINES [ROUTE_LINES]]: prints a graft.toml serving the
#     foo service (POST /foo on foo@1) on $port_app, admin on $port_admin, with those lines
#     added at the top level and to the route;
#   - serve_work ADMIN_PORT [SECONDS]: runs `graft serve --config graft.toml` in $work (log in
#     $work/serve.log), its pid in $server and $pids, and waits (5 s unless told) for its admin
#     API, showing the end of the log if it never answers;
#   - $port, a random loopback port (scripts use $port and $((port + 1)));
#   - deploy_alternately ADMIN_PORT SECONDS INTERVAL_MS [PREFIX]: deploys $work/v2, $work/v1,
#     $work/v2, ... for SECONDS, INTERVAL_MS apart; prints the migrations of the deploys that
#     went live (those starting with PREFIX) and the longest pause, `N MS`;
#   - need TOOL: installs a missing tool (wrk, valgrind) from Debian's packages;
#   - wait_for URL [SECONDS]: waits (5 s unless told) until URL answers.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$(pwd)
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

build() {
  local profile=$1
  shift
  local flag=()
  [ "$profile" = release ] && flag=(--release)
  echo "==> building graft and the plugins ($profile)" >&2
  cargo build "${flag[@]}" --quiet -p graft --bin graft
  [ $# -eq 0 ] || cargo build "${flag[@]}" --quiet $(printf -- '-p %s ' "$@")
  target="${CARGO_TARGET_DIR:-$root/target}/$profile"
  graft="$target/graft"
}

lib() { echo "$target/lib${1//-/_}.so"; }

pack_foo_releases() {
  build release foo-v1 bar-v1 frob-v1 foo-v2 bar-v2 frob-v2
  local v
  for v in v1 v2; do
    "$graft" pack "$work/$v" --name "$v" --complete \
      "$(lib "foo-$v")" "$(lib "bar-$v")" "$(lib "frob-$v")" >/dev/null
  done
}

foo_config() {
  cat <<EOF
data_dir = "$1"
release = "$2"
listen = "127.0.0.1:$port_app"
${3:-}

[admin]
listen = "127.0.0.1:$port_admin"

[[route]]
method = "POST"
path = "/foo"
export = "foo@1"
${4:-}
EOF
}

serve_work() {
  # `exec`: the pid recorded is graft's own, so the cleanup stops the server (not a subshell)
  # and /proc/$server is the server's.
  (cd "$work" && RUST_LOG=warn exec "$graft" serve --config graft.toml >>"$work/serve.log" 2>&1) &
  server=$!
  pids+=("$server")
  wait_for "http://127.0.0.1:$1/status" "${2:-5}" || { tail -n 20 "$work/serve.log" >&2; return 1; }
}

port=$((20000 + RANDOM % 20000))

# need TOOL: installs the Debian package of that name if the command is missing.
need() {
  if ! command -v "$1" >/dev/null; then
    echo "installing $1" >&2
    (apt-get update -qq && apt-get install -y -qq "$1") >/dev/null
  fi
}

deploy_alternately() {
  cat >"$work/deployer.py" <<'PY'
import json, sys, time, urllib.request
port, work, duration, interval_ms = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
prefix = sys.argv[5] if len(sys.argv) > 5 else ""
migrations, max_pause, i = 0, 0.0, 0
deadline = time.monotonic() + duration
while time.monotonic() < deadline:
    body = json.dumps({"dir": f"{work}/{'v2' if i % 2 == 0 else 'v1'}"}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/deploy", data=body,
                                 headers={"Content-Type": "application/json"})
    try:
        report = json.load(urllib.request.urlopen(req, timeout=30))
        migrations += sum(1 for m in report.get("migrated", []) if m.startswith(prefix))
        max_pause = max(max_pause, float(report.get("pause_ms", 0)))
        i += 1
    except Exception as e:
        print(f"deploy not made: {e}", file=sys.stderr)
        time.sleep(0.2)
    time.sleep(interval_ms / 1000)
print(f"{migrations} {max_pause:.3f}")
PY
  python3 "$work/deployer.py" "$1" "$work" "$2" "$3" "${4:-}"
}

wait_for() {
  for _ in $(seq 1 $((${2:-5} * 100))); do curl -s -o /dev/null "$1" && return 0; sleep 0.01; done
  echo "$1 never answered" >&2
  return 1
}
