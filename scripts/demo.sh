#!/usr/bin/env bash
# The graft demo: builds the example plugins, packs releases v1 and v2 with `graft pack`,
# checks them with `graft check`, then runs a host that serves v1, patches it to v2 while a
# request is in flight, rolls back, and refuses a release that does not link.
#
# Run: scripts/demo.sh          (everything stays under a temp dir, removed at the end)
set -euo pipefail
. "$(dirname "$0")/lib.sh"

build release foo-v1 bar-v1 frob-v1 foo-v2 bar-v2 frob-v2
cargo build --release --quiet -p graft-host --examples

echo "==> packing releases"
"$graft" pack "$work/v1" --name v1 --complete "$(lib foo-v1)" "$(lib bar-v1)" "$(lib frob-v1)"
"$graft" pack "$work/v2" --name v2 --complete "$(lib foo-v2)" "$(lib bar-v2)" "$(lib frob-v2)"
# foo and bar move to contract 2, frob stays on contract 1: foo's import frob@2 is unbound.
"$graft" pack "$work/bad" --name new-bar-without-new-frob "$(lib foo-v2)" "$(lib bar-v2)"

echo "==> graft check $work/v2"
"$graft" check "$work/v2"

echo "==> live patching"
"$target/examples/live_patch" "$work/v1" "$work/v2" "$work/bad" "$work/data"

echo
echo "==> graft serve (loopback), patched with the CLI"
admin="http://127.0.0.1:$((port + 1))"
cat >"$work/graft.toml" <<EOF
data_dir = "serve-data"
release = "v1"
listen = "127.0.0.1:$port"

[admin]
listen = "127.0.0.1:$((port + 1))"

[[route]]
method = "POST"
path = "/foo"
export = "foo@1"
EOF
"$graft" serve --config "$work/graft.toml" &
server=$!
pids+=("$server")
wait_for "$admin/status"
foo() {
  echo "\$ curl -si -X POST -d '{\"a\": 1}' http://127.0.0.1:$port/foo"
  curl -s -i -X POST -d '{"a": 1}' "http://127.0.0.1:$port/foo" | tr -d '\r' | grep -E '^x-graft-generation|^\{'
}
foo
echo "\$ graft deploy v2";  "$graft" deploy "$work/v2" --admin "$admin"
foo
echo "\$ graft deploy new-bar-without-new-frob (on v2: it links)"
"$graft" deploy "$work/bad" --admin "$admin"
echo "\$ graft rollback";   "$graft" rollback --admin "$admin"
echo "\$ graft rollback";   "$graft" rollback --admin "$admin"
foo
echo "\$ graft deploy new-bar-without-new-frob (on v1: refused, v1 keeps serving)"
"$graft" deploy "$work/bad" --admin "$admin" || true
foo
echo "\$ graft status";     "$graft" status --admin "$admin"
kill -TERM "$server"
wait "$server"
