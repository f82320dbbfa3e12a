#!/usr/bin/env bash
# Benchmarks lunkeeper against the tools operators use today (issue 4), in one VM boot:
#
#   sudo tests/bench.sh [--rounds N] [--topologies "T1 T2"] [--t1-volumes N] [--t2-luns N]
#                       [--contenders "lunkeeper os-brick iscsiadm-script floor"] [--idle-secs N]
#
# Installs what it needs (tests/vm/setup.sh --bench: the VM stack and os-brick from PyPI),
# builds lunkeeper in release mode, boots the VM once and runs tests/vm/bench.sh there, then
# prints the markdown table. Results: tests/vm/out/bench-<time>/{bench.md,bench.json,runs.jsonl,
# idle.json}. Defaults: 3 rounds, T1 = 32 targets x 2 portals, T2 = 64 LUNs x 2 portals, 60 s
# idle sample. Takes well over an hour under software emulation with the defaults.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

tests/vm/setup.sh --bench
if ! command -v cargo >/dev/null; then
  echo "bench.sh: cargo not found (install Rust: https://rustup.rs)" >&2
  exit 3
fi
cargo build --release --locked --quiet
# The VM runs a frozen copy: a rebuild while it runs must not change the binary under it.
mkdir -p target/vm-bin
cp target/release/lunkeeper target/vm-bin/lunkeeper-bench

NAME=bench-$(date -u +%Y%m%d-%H%M%S)
rc=0
LK_VM_NAME=$NAME LK_VM_TIMEOUT=${LK_VM_TIMEOUT:-14400} LK_VM_MEMORY=${LK_VM_MEMORY:-2G} \
  LUNKEEPER_BIN=$REPO/target/vm-bin/lunkeeper-bench \
  tests/vm/vm.sh tests/vm/bench.sh "$@" || rc=$?
OUTDIR=tests/vm/out/$NAME
machine="$(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), QEMU TCG guest with 2 vCPUs"
echo
python3 tests/vm/bench/report.py "$OUTDIR" --date "$(date -u +%Y-%m-%d)" --machine "$machine" || rc=3
echo "bench.sh: results in $OUTDIR (bench.md, bench.json)"
exit "$rc"
