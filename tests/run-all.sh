#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs what it needs, then formatting,
# lints, unit tests, the VM scenarios against a real kernel and the real-boot scenario
# (tests/boot/boot.sh). Run as root.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash tests/vm/setup.sh

# The real-boot scenario's Debian image (debootstrap: mostly download and unpack) is built in
# the background while the rest runs; tests/boot/boot.sh then finds it in its cache.
mkdir -p target
tests/boot/image.sh >target/boot-image.log 2>&1 &
image_pid=$!

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings
echo "== unit and integration tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --no-fail-fast
else
  cargo test
fi

echo "== fuzzing every parser of outside input (time-boxed)"
bash tests/fuzz.sh

echo "== the Debian package (build, lintian, contents)"
bash tests/pkg.sh

echo "== VM scenarios (real kernel: LIO target, open-iscsi, multipathd, udev)"
# The release build (tests/pkg.sh made it already): an emulated guest runs a debug build's
# planner and observer many times slower and loads its 90 MB over 9p at every call.
cargo build --release --locked --bin lunkeeper
# The VMs use a copy, so rebuilding while they run cannot change the binary under them.
mkdir -p target/vm-bin
bin=$PWD/target/vm-bin/lunkeeper
cp target/release/lunkeeper "$bin"
failed=0
passed=0
# faults.sh runs every row of issue 8's fault matrix it holds, in one boot (faults-daemon.sh
# holds the daemon rows b, e, f, h, i).
for scenario in tests/vm/smoke.sh tests/vm/core.sh tests/vm/daemon.sh tests/vm/faults-daemon.sh \
  "tests/vm/faults.sh c j k g d f a" tests/vm/day2.sh tests/vm/partitions.sh; do
  # shellcheck disable=SC2086 # the scenario's arguments are split on purpose
  set -- $scenario
  name=$(basename "$1" .sh)
  if LUNKEEPER_BIN="$bin" LK_VM_NAME="$name" LK_VM_TIMEOUT=1800 tests/vm/vm.sh "$@"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    echo "VM scenario $name FAILED: see tests/vm/out/$name/"
  fi
done
echo "vm scenarios: $passed passed, $failed failed"

echo "== the real-boot scenario (Debian 12 under QEMU, systemd as PID 1, the .deb installed)"
# tests/boot/image.sh debootstraps the image on the first run (a few minutes, with network) and
# caches it in /var/cache/lunkeeper-boot/ on a hash of image.sh; three boots follow.
boot=passed
if ! wait "$image_pid"; then
  echo "the background image build failed (target/boot-image.log); boot.sh tries again:"
  tail -n 5 target/boot-image.log
fi
if ! tests/boot/boot.sh; then
  boot=FAILED
  echo "boot scenario FAILED: see tests/boot/out/"
fi
echo "boot scenario: $boot"
echo "scenarios: vm $passed passed, $failed failed; boot $boot"
((failed == 0)) && [[ $boot == passed ]]
