#!/usr/bin/env bash
# The demo, from a fresh Debian machine: boots a throwaway VM with a real iSCSI target (LIO,
# two portals), writes a desired-state file, runs `lunkeeper apply` and `lunkeeper status`
# against it and prints both. Run as root.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash tests/vm/setup.sh >/dev/null
cargo build --quiet
LK_VM_NAME=demo tests/vm/vm.sh tests/vm/demo.sh 2>&1 | sed -n '/^===== /,/^===== end/p'
