#!/usr/bin/env bash
# The dev loop, measured: runs `graft dev` on a scratch copy of the hello plugin, edits its
# source N times (each edit changes the greeting and is checked with curl), then saves a syntax
# error and checks that the last good build keeps serving. Prints graft dev's reload lines and
# the median build time and time-to-live after the build.
#
# Run: scripts/dev-loop.sh [--edits N] [--release]   (loopback only; everything under a temp dir)
#
# It ends with exactly one line:
#   edits=N median_build_s=S median_live_after_build_ms=MS
set -euo pipefail
. "$(dirname "$0")/lib.sh"

edits=10
profile=()
while [ $# -gt 0 ]; do
  case "$1" in
    --edits) edits=$2; shift 2 ;;
    --release) profile=(--release); shift ;;
    *) echo "usage: $0 [--edits N] [--release]" >&2; exit 2 ;;
  esac
done

build debug

# A plugin crate outside the workspace, as a user's would be; it reuses the workspace's lock
# file and target directory, so only the plugin itself is compiled on each edit.
mkdir -p "$work/hello/src"
cat >"$work/hello/Cargo.toml" <<EOF
[package]
name = "dev-loop-hello"
version = "1.0.0"
edition = "2021"

[lib]
crate-type = ["cdylib"]

[dependencies]
graft-api = { path = "$root/plugin-api" }
abi_stable = "0.11.3"
serde = { version = "1", features = ["derive"] }

# The dev profile graft recommends for plugin crates (README, "Develop"): debug info for the
# plugin itself, kept beside its objects rather than in the library; none for dependencies.
# The library graft dev hashes and loads is a few MB rather than 18.
[profile.dev]
split-debuginfo = "unpacked"
[profile.dev.package."*"]
debug = false

[workspace]
EOF
cp Cargo.lock "$work/hello/"
greet() {
  cat >"$work/hello/src/lib.rs" <<EOF
use graft_api::{Context, Error};

graft_api::contract! {
    /// A greeting: the contract the route calls.
    pub struct HelloV1 = "hello@1": json fn(String) -> String;
}

graft_api::plugin! {
    name: "hello",
    version: env!("CARGO_PKG_VERSION"),
    exports: { HelloV1 => hello },
}

fn hello(_: &Context<'_>, name: String) -> Result<String, Error> {
    Ok(format!("$1, {name}"))
}
EOF
}
greet "edit 0"

cat >"$work/graft.toml" <<EOF
data_dir = "data"
listen = "127.0.0.1:$port"
[admin]
listen = "127.0.0.1:$((port + 1))"
[[route]]
method = "POST"
path = "/hello"
export = "hello@1"
EOF

CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}" "$graft" dev "${profile[@]}" \
  --config "$work/graft.toml" "$work/hello" >"$work/out" 2>"$work/err" &
pids+=($!)

# Waits until the service answers with $1 (30 s at most for an edit, 10 minutes for the first
# build, which may compile dependencies).
await() {
  local deadline=$((SECONDS + $2))
  while [ $SECONDS -lt $deadline ]; do
    if [ "$(curl -s -X POST -d '"you"' "http://127.0.0.1:$port/hello")" = "\"$1, you\"" ]; then
      return 0
    fi
    sleep 0.05
  done
  echo "the service never answered \"$1, you\"; graft dev's output:" >&2
  cat "$work/out" "$work/err" >&2
  exit 1
}

await "edit 0" 600
for i in $(seq 1 "$edits"); do
  greet "edit $i"
  await "edit $i" 30
done
echo "==> saving a syntax error"
echo 'fn hello( {' >"$work/hello/src/lib.rs"
deadline=$((SECONDS + 30))
until grep -q "build failed" "$work/out"; do
  [ $SECONDS -lt $deadline ] || { echo "no failed build reported" >&2; exit 1; }
  sleep 0.05
done
await "edit $edits" 1
echo "the build did not compile; the last good build still answers \"edit $edits, you\""

echo "==> graft dev's reload lines"
grep '^reload' "$work/out"
# Medians over the edits (reload 1 is the first build, which may compile dependencies).
grep '^reload' "$work/out" | grep ' live (' | tail -n +2 | python3 -c '
import re, statistics, sys
rows = [re.search(r"built in ([0-9.]+) s, live ([0-9.]+) ms", l).groups() for l in sys.stdin]
build = statistics.median(float(b) for b, _ in rows)
live = statistics.median(float(l) for _, l in rows)
print(f"edits={len(rows)} median_build_s={build:.2f} median_live_after_build_ms={live:.1f}")
'
