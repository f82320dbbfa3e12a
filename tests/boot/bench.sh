#!/usr/bin/env bash
# bench.sh: boot to every volume usable, lunkeeper against open-iscsi's own
# `node.startup = automatic` with multipathd, over the image of tests/boot/boot.sh (issue 9).
# Printed, not asserted; not part of CI (each boot is a minute or more under TCG).
#
#   tests/boot/bench.sh [ROUNDS]      (default 2: boots L O L O, after one warm-up boot of each)
#
# Two disks from the same image, each with the .deb installed and the LIO target unit
# (tests/boot/lib.sh), attaching the same two multipath volumes (LUNs 0 and 1 of the target, both
# portals):
#   lunkeeper    lunkeeper.service enabled with /etc/lunkeeper/volumes.toml naming them (and the
#                udev rule of the package, so its readiness includes /dev/lunkeeper/NAME);
#   open-iscsi   lunkeeper.service disabled; a node record per portal with node.startup =
#                automatic (iscsiadm -o new in the chroot), the WWIDs in /etc/multipath/wwids so
#                multipathd makes the maps (find_multipaths strict); open-iscsi.service logs in.
# In each boot lk-bench.service (tests/boot/guest/lk-bench.sh) measures, in the guest, from the
# kernel's start (CLOCK_MONOTONIC 0; systemd's own start is printed beside it) until every
# volume's /dev/mapper map passes a 4 KiB O_DIRECT read, then powers off. The boots alternate,
# so a slower or busier host weighs on both alike; the warm-up boots (first boot of a fresh disk:
# machine-id, first login, WWID registration) are shown but not counted.
#
# Environment: LK_BENCH_OUT (default tests/boot/out/bench-<timestamp>), LK_BENCH_TIMEOUT (seconds
# per boot, default 300), LK_BENCH_WARMUP (default 1; 0 skips the warm-up boots), and those of
# tests/boot/lib.sh.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
ROUNDS=${1:-2}
TIMEOUT=${LK_BENCH_TIMEOUT:-300}
OUT=${LK_BENCH_OUT:-$HERE/out/bench-$(date +%Y%m%d-%H%M%S)}
# shellcheck source=tests/boot/lib.sh
. "$HERE/lib.sh"

if ((EUID != 0)); then
  echo "bench.sh: must run as root (loop mounts, chroot)" >&2
  exit 2
fi
rm -rf "$OUT"
mkdir -p "$OUT"
: >"$OUT/bench.txt"
lk_image
lk_deb

mnt=$OUT/mnt
trap 'lk_umount "$mnt"' EXIT
wwids="$(lk_wwid vol0)
$(lk_wwid vol1)"

# ---- the lunkeeper disk --------------------------------------------------------------------------
lk_disk "$OUT/lunkeeper.raw" "$mnt"
bench_files() { # MODE: the probe and what it measures
  install -D -m 0755 "$HERE/guest/lk-bench.sh" "$mnt/usr/local/lib/lk-boot/lk-bench.sh"
  install -m 0644 "$HERE/guest/lk-bench.service" "$mnt/etc/systemd/system/"
  mkdir -p "$mnt/etc/systemd/system/sysinit.target.wants" "$mnt/etc/lk-bench"
  ln -sf /etc/systemd/system/lk-bench.service "$mnt/etc/systemd/system/sysinit.target.wants/"
  echo "$1" >"$mnt/etc/lk-bench/mode"
  echo "$wwids" >"$mnt/etc/lk-bench/wwids"
}
bench_files lunkeeper
[[ -L $mnt/etc/systemd/system/multi-user.target.wants/lunkeeper.service ]] || {
  echo "bench.sh: the package did not enable lunkeeper.service" >&2
  exit 1
}
cat >"$mnt/etc/lunkeeper/volumes.toml" <<EOF
# tests/boot/bench.sh: the two volumes, as open-iscsi's records attach them on the other disk.
[defaults]
multipath = true

[[volume]]
name = "vol0"
target = "$IQN"
portals = ["127.0.0.1:3260", "127.0.0.2:3260"]
lun = 0

[[volume]]
name = "vol1"
target = "$IQN"
portals = ["127.0.0.1:3260", "127.0.0.2:3260"]
lun = 1
EOF
lk_umount "$mnt"

# ---- the open-iscsi disk: the same, lunkeeper disabled, automatic node records -----------------------
cp --sparse=always "$OUT/lunkeeper.raw" "$OUT/open-iscsi.raw"
mount -o loop "$OUT/open-iscsi.raw" "$mnt"
bench_files open-iscsi
rm -f "$mnt/etc/systemd/system/multi-user.target.wants/lunkeeper.service" "$mnt/etc/lunkeeper/volumes.toml"
# iscsiadm edits the chroot's own node database; in a network namespace of its own it cannot
# reach an iscsid of this machine (their socket is abstract, per namespace), whose "can not
# connect" it logs and goes on.
for p in 127.0.0.1:3260 127.0.0.2:3260; do
  unshare --net chroot "$mnt" iscsiadm -m node -o new -T "$IQN" -p "$p" >>"$OUT/iscsiadm.log" 2>&1
  unshare --net chroot "$mnt" iscsiadm -m node -T "$IQN" -p "$p" -o update -n node.startup -v automatic >>"$OUT/iscsiadm.log" 2>&1
done
grep -rh '^node.startup' "$mnt/etc/iscsi/nodes" | sort | uniq -c | tee -a "$OUT/iscsiadm.log"
mkdir -p "$mnt/etc/multipath"
{
  echo "# Multipath wwids, Version : 1.0"
  echo "# tests/boot/bench.sh: the two volumes' WWIDs, so multipathd makes their maps."
  sed 's|.*|/&/|' <<<"$wwids"
} >"$mnt/etc/multipath/wwids"
umount "$mnt"

# ---- alternating boots ---------------------------------------------------------------------------
order=()
((${LK_BENCH_WARMUP:-1})) && order+=(warmup:lunkeeper warmup:open-iscsi)
for _ in $(seq 1 "$ROUNDS"); do order+=(lunkeeper open-iscsi); done
n=0
for run in "${order[@]}"; do
  n=$((n + 1))
  mode=${run#warmup:}
  t0=$(date +%s)
  rc=0
  lk_boot "$OUT/$mode.raw" "$OUT/console-$n-$mode.log" "$TIMEOUT" || rc=$?
  mount -o ro,noload,loop "$OUT/$mode.raw" "$mnt"
  line=$(tail -n 1 "$mnt/var/lib/lk-boot/bench.txt" 2>/dev/null || true)
  count=$(wc -l <"$mnt/var/lib/lk-boot/bench.txt" 2>/dev/null || echo 0)
  umount "$mnt"
  # A boot that recorded nothing new (timed out before the probe wrote) is recorded as such.
  expected=$(grep -c "^$mode\$\|^warmup:$mode\$" <(printf '%s\n' "${order[@]:0:$n}"))
  ((count == expected)) || line="mode=$mode usable_s=none"
  echo "$run $line host_s=$(($(date +%s) - t0)) qemu_rc=$rc" | tee -a "$OUT/bench.txt"
done

# ---- table ---------------------------------------------------------------------------------------
python3 - "$OUT/bench.txt" <<'PY'
import statistics, sys
rows = []
for line in open(sys.argv[1]):
    run, *kv = line.split()
    f = dict(x.split("=", 1) for x in kv)
    rows.append((run, f))
def num(f, k):
    try:
        return float(f.get(k, ""))
    except ValueError:
        return None
print(f"{'boot':<22} {'usable (s)':>10} {'after systemd start':>19} {'attacher active':>15} {'remote-fs-pre':>13} {'sessions':>8}")
for run, f in rows:
    u, us = num(f, "usable_s"), num(f, "userspace_s")
    since = f"{u - us:.2f}" if u is not None and us is not None else "-"
    print(f"{run:<22} {f.get('usable_s', '-'):>10} {since:>19} {f.get('attacher_active_s', '-'):>15} {f.get('remote_fs_pre_s', '-'):>13} {f.get('sessions', '-'):>8}")
print()
for mode in ("lunkeeper", "open-iscsi"):
    xs = [num(f, "usable_s") for run, f in rows if run == mode]
    ys = [num(f, "usable_s") - num(f, "userspace_s") for run, f in rows
          if run == mode and num(f, "usable_s") is not None and num(f, "userspace_s") is not None]
    xs = [x for x in xs if x is not None]
    if xs:
        print(f"{mode:<11} boots {len(xs)}: usable at median {statistics.median(xs):.2f} s after the kernel's start "
              f"({statistics.median(ys):.2f} s after systemd's), min {min(xs):.2f}, max {max(xs):.2f}")
    else:
        print(f"{mode:<11} no measured boot")
PY
echo "bench.sh: results in $OUT"
