#!/usr/bin/env bash
# vm.sh: run one guest script as root inside a throwaway virtme-ng VM and judge it on the host.
#
#   tests/vm/vm.sh GUEST_SCRIPT [ARGS...]
#
# The guest sees the host's file system read-only at the same paths (its /etc, /var, /tmp, ...
# are tmpfs overlays), so this checkout and the lunkeeper binary are usable inside. The only
# writable host directory is the results dir, tests/vm/out/<name>/ (exported as $OUT in the
# guest). The guest script sources guest-lib.sh, records checks in $OUT/results and writes
# $OUT/verdict ("N passed, M failed"). The guest's exit status is NOT trusted: this script
# exits 0 only if the verdict file exists, says 0 failed and at least 1 passed, and agrees
# with the results file.
#
# Environment:
#   LK_VM_NAME      results dir name under tests/vm/out (default: <script>-<timestamp>)
#   LK_VM_TIMEOUT   wall-clock limit for the VM in seconds (default 900)
#   LK_VM_KERNEL    kernel image (default: newest /boot/vmlinuz-*-amd64)
#   LK_VM_MEMORY    guest memory (default 1G); LK_VM_CPUS (default 2)
#   LK_VNG          vng executable (default /opt/lunkeeper-vng/bin/vng, see setup.sh)
#   LUNKEEPER_BIN   binary the guest scripts use (default <repo>/target/debug/lunkeeper)
# Exit codes: 0 all checks passed, 1 a check failed, 2 usage, 3 no/garbled verdict (boot
# failure, guest script crash, timeout).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)

if (($# < 1)) || [[ $1 == -h || $1 == --help ]]; then
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'
  exit 2
fi
if [[ ! -f $1 ]]; then
  echo "vm.sh: no such guest script: $1" >&2
  exit 2
fi
GUEST_SCRIPT=$(realpath "$1")
shift

VNG=${LK_VNG:-/opt/lunkeeper-vng/bin/vng}
if [[ ! -x $VNG ]]; then
  echo "vm.sh: $VNG not found: run tests/vm/setup.sh first" >&2
  exit 3
fi
# vng runs virtme-run from its own venv: put that bin dir first.
VNG_BIN=$(dirname "$VNG")
export PATH="$VNG_BIN:$PATH"

KERNEL=${LK_VM_KERNEL:-}
if [[ -z $KERNEL ]]; then
  KERNEL=$(find /boot -maxdepth 1 -name 'vmlinuz-*-amd64' | sort -V | tail -n 1)
fi
if [[ -z $KERNEL || ! -r $KERNEL ]]; then
  echo "vm.sh: no readable kernel image (/boot/vmlinuz-*-amd64); run tests/vm/setup.sh" >&2
  exit 3
fi

TIMEOUT=${LK_VM_TIMEOUT:-900}
NAME=${LK_VM_NAME:-$(basename "$GUEST_SCRIPT" .sh)-$(date +%Y%m%d-%H%M%S)}
OUTDIR=$HERE/out/$NAME
rm -rf "$OUTDIR"
mkdir -p "$OUTDIR"
LUNKEEPER_BIN=${LUNKEEPER_BIN:-$REPO/target/debug/lunkeeper}
if [[ ! -x $LUNKEEPER_BIN ]]; then
  echo "vm.sh: note: $LUNKEEPER_BIN does not exist (fine for scripts that do not use it)" >&2
fi

# The command vng runs: a launcher in the shared dir, so arguments and environment survive
# the trip through the kernel command line untouched.
LAUNCHER=$OUTDIR/.launch.sh
# shellcheck disable=SC2016 # the single-quoted $ expressions are for the guest shell
{
  echo '#!/bin/bash'
  printf 'export OUT=%q LK_VM_DIR=%q LK_REPO=%q LUNKEEPER_BIN=%q\n' "$OUTDIR" "$HERE" "$REPO" "$LUNKEEPER_BIN"
  echo 'export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  echo 'export LC_ALL=C.UTF-8'
  printf 'cd %q\n' "$REPO"
  printf 'echo "[guest] $(uname -r) up; running %s"\n' "${GUEST_SCRIPT#"$REPO"/}"
  printf 'bash %q' "$GUEST_SCRIPT"
  (($#)) && printf ' %q' "$@"
  echo ' </dev/null'
  echo 'rc=$?'
  echo 'echo "$rc" >"$OUT/guest-exit-status"'
  echo 'echo "[guest] script exited with status $rc"'
} >"$LAUNCHER"
chmod +x "$LAUNCHER"

echo "vm.sh: kernel $KERNEL, results in $OUTDIR, timeout ${TIMEOUT}s"
t0=$(date +%s)
set +e
timeout --kill-after=30 "$TIMEOUT" \
  "$VNG" -r "$KERNEL" --user root --disable-kvm --memory "${LK_VM_MEMORY:-1G}" --cpus "${LK_VM_CPUS:-2}" \
  --rwdir "$OUTDIR" -- "$LAUNCHER" </dev/null 2>&1 | tee "$OUTDIR/console.log"
vm_rc=${PIPESTATUS[0]}
set -e
t1=$(date +%s)
echo "vm.sh: VM finished after $((t1 - t0))s (vng exit status $vm_rc)"
if ((vm_rc == 124 || vm_rc == 137)); then
  echo "vm.sh: VM timed out after ${TIMEOUT}s" >&2
fi

# The verdict, decided here from the files the guest wrote.
results=$OUTDIR/results
verdict=$OUTDIR/verdict
if [[ -s $results ]]; then
  echo "---- $results"
  cat "$results"
fi
if [[ ! -s $verdict ]]; then
  echo "vm.sh: FAIL: no verdict file (boot failure, crash or timeout); see $OUTDIR/console.log" >&2
  echo "0 passed, 1 failed"
  exit 3
fi
line=$(head -n 1 "$verdict")
if [[ ! $line =~ ^([0-9]+)\ passed,\ ([0-9]+)\ failed$ ]]; then
  echo "vm.sh: FAIL: garbled verdict '$line'" >&2
  echo "0 passed, 1 failed"
  exit 3
fi
passed=${BASH_REMATCH[1]}
failed=${BASH_REMATCH[2]}
r_pass=$(grep -c '^PASS ' "$results" 2>/dev/null || true)
r_fail=$(grep -c '^FAIL ' "$results" 2>/dev/null || true)
if ((r_pass != passed || r_fail != failed)); then
  echo "vm.sh: FAIL: verdict '$line' disagrees with results ($r_pass PASS, $r_fail FAIL lines)" >&2
  echo "$r_pass passed, $((r_fail + 1)) failed"
  exit 3
fi
echo "vm.sh: results in $OUTDIR"
if ((failed == 0 && passed > 0)); then
  echo "$passed passed, $failed failed"
  exit 0
fi
if ((passed == 0 && failed == 0)); then
  echo "vm.sh: FAIL: the guest ran no check" >&2
  echo "0 passed, 1 failed"
  exit 1
fi
echo "$passed passed, $failed failed"
exit 1
