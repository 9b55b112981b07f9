# Shared by the scripts in this folder; each sources it right after `set -euo pipefail`:
#   . "$(dirname "$0")/lib.sh"
# It gives them:
#   - the repository as the working directory, and $root;
#   - $work, a temp dir, removed on exit, when every pid in $pids is killed too;
#   - build PROFILE CRATE...: builds the graft binary and these plugin crates (PROFILE is
#     release or debug), and sets $target (the profile's output directory) and $graft;
#   - lib CRATE: the library a plugin crate built, in $target;
#   - $port, a random loopback port (scripts use $port and $((port + 1)));
#   - need_wrk: installs wrk if it is missing;
#   - wait_for URL: waits (5 s at most) until URL answers.
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

port=$((20000 + RANDOM % 20000))

need_wrk() {
  if ! command -v wrk >/dev/null; then
    echo "installing wrk" >&2
    (apt-get update -qq && apt-get install -y -qq wrk) >/dev/null
  fi
}

wait_for() {
  for _ in $(seq 1 500); do curl -s -o /dev/null "$1" && return 0; sleep 0.01; done
  echo "$1 never answered" >&2
  return 1
}
