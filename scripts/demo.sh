#!/usr/bin/env bash
# The graft demo: builds the example plugins, packs releases v1 and v2 with `graft pack`,
# checks them with `graft check`, then runs a host that serves v1, patches it to v2 while a
# request is in flight, rolls back, and refuses a release that does not link.
#
# Run: scripts/demo.sh          (everything stays under a temp dir, removed at the end)
set -euo pipefail
cd "$(dirname "$0")/.."

plugins=(foo-v1 bar-v1 frob-v1 foo-v2 bar-v2 frob-v2)
echo "==> building graft and the example plugins (release)"
cargo build --release --quiet -p graft-host --bins --examples
cargo build --release --quiet $(printf -- '-p %s ' "${plugins[@]}")

target="${CARGO_TARGET_DIR:-target}/release"
graft="$target/graft"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
lib() { echo "$target/lib${1//-/_}.so"; }

echo "==> packing releases"
"$graft" pack "$work/v1" --name v1 --complete "$(lib foo-v1)" "$(lib bar-v1)" "$(lib frob-v1)"
"$graft" pack "$work/v2" --name v2 --complete "$(lib foo-v2)" "$(lib bar-v2)" "$(lib frob-v2)"
# foo and bar move to contract 2, frob stays on contract 1: foo's import frob@2 is unbound.
"$graft" pack "$work/bad" --name new-bar-without-new-frob "$(lib foo-v2)" "$(lib bar-v2)"

echo "==> graft check $work/v2"
"$graft" check "$work/v2"

echo "==> live patching"
"$target/examples/live_patch" "$work/v1" "$work/v2" "$work/bad" "$work/data"
