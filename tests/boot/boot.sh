#!/usr/bin/env bash
# boot.sh: lunkeeper under real systemd across three boots of a Debian 12 VM (issue 9).
#
#   tests/boot/boot.sh
#
# 1. tests/boot/image.sh builds (or reuses from its cache) a bookworm root file system.
# 2. packaging/build-deb.sh builds the .deb (LK_BOOT_DEB=path skips this and uses that file).
# 3. A per-run copy of the image (sparse, so the cached base stays clean) gets the .deb
#    installed with `apt-get install` in a chroot, then the test's own files: an LIO target
#    unit ordered before lunkeeper (tests/boot/guest/lk-target.*), /etc/lunkeeper/volumes.toml
#    with two multipath volumes over both portals, an ext4 on the first volume's LUN mounted
#    from /etc/fstab with _netdev, the initiator name, and the check unit
#    (tests/boot/guest/lk-check.*), which runs after multi-user.target and powers off.
# 4. Three boots under QEMU (the image's own kernel and initrd, root on virtio, systemd as
#    PID 1, serial console to out/<run>/console-N.log). After each, the results the guest wrote
#    on its disk are read back (loop mount, read-only).
#
# The verdict is the host's: "boot: N passed, M failed", exit 0 only if nothing failed, every
# boot wrote its results to the end, and something passed. What each boot checks is in
# tests/boot/guest/lk-check.sh.
#
# Environment: LK_BOOT_OUT (results dir, default tests/boot/out/<timestamp>), LK_BOOT_TIMEOUT
# (seconds per boot, default 420), and those of tests/boot/lib.sh (LK_BOOT_DEB, LK_BOOT_ACCEL,
# LK_BOOT_MEMORY, LK_BOOT_CPUS, LK_BOOT_CACHE).
#
# The benchmark over the same image (lunkeeper against open-iscsi's node.startup = automatic)
# is tests/boot/bench.sh.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
BOOTS=3
TIMEOUT=${LK_BOOT_TIMEOUT:-420}
OUT=${LK_BOOT_OUT:-$HERE/out/$(date +%Y%m%d-%H%M%S)}
# shellcheck source=tests/boot/lib.sh
. "$HERE/lib.sh"

if ((EUID != 0)); then
  echo "boot.sh: must run as root (loop mounts, chroot)" >&2
  exit 2
fi
rm -rf "$OUT"
mkdir -p "$OUT"
t_start=$(date +%s)

# ---- image and package -----------------------------------------------------------------------
lk_image
lk_deb || {
  echo "boot: 0 passed, 1 failed (the .deb did not build)"
  exit 1
}

# ---- the per-run disk --------------------------------------------------------------------------
disk=$OUT/disk.raw
mnt=$OUT/mnt
trap 'lk_umount "$mnt"' EXIT

t0=$(date +%s)
lk_disk "$disk" "$mnt" || {
  echo "boot: 0 passed, 1 failed (apt-get install of the .deb failed)"
  exit 1
}
# The test's checks and configuration.
install -D -m 0755 "$HERE/guest/lk-check.sh" "$mnt/usr/local/lib/lk-boot/lk-check.sh"
install -m 0644 "$HERE/guest/lk-check.service" "$mnt/etc/systemd/system/"
ln -sf /etc/systemd/system/lk-check.service "$mnt/etc/systemd/system/multi-user.target.wants/"
[[ -L $mnt/etc/systemd/system/multi-user.target.wants/lunkeeper.service ]] ||
  echo "boot.sh: warning: the package did not enable lunkeeper.service" >&2
# lunkeeper's info lines (its "ready elapsed_ms=..." among them) in the journal, for the checks.
mkdir -p "$mnt/etc/systemd/system/lunkeeper.service.d"
printf '[Service]\nEnvironment=LUNKEEPER_LOG=info\n' >"$mnt/etc/systemd/system/lunkeeper.service.d/boot-test-log.conf"
# Debian's prometheus-node-exporter serves lunkeeper's metrics: its textfile collector reads the
# directory of lunkeeper's default metrics_file (/var/lib/prometheus/node-exporter/lunkeeper.prom),
# said explicitly here as an operator would.
[[ -f $mnt/etc/default/prometheus-node-exporter ]] ||
  echo "boot.sh: warning: prometheus-node-exporter is not in the image" >&2
echo 'ARGS="--collector.textfile.directory=/var/lib/prometheus/node-exporter"' \
  >"$mnt/etc/default/prometheus-node-exporter"
cat >"$mnt/etc/lunkeeper/volumes.toml" <<EOF
# tests/boot: two multipath volumes on the LIO target lk-target.service sets up in this VM.
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
printf '/dev/lunkeeper/vol0\t/mnt/vol0\text4\t_netdev\t0\t0\n' >>"$mnt/etc/fstab"
mkdir -p "$mnt/mnt/vol0"
mkfs.ext4 -q -F -L vol0 "$mnt/var/lib/lk-target/vol0.img"
umount "$mnt"
echo "boot.sh: run disk ready in $(($(date +%s) - t0)) s: $disk"

# ---- three boots -------------------------------------------------------------------------------
boot_times=()
for b in $(seq 1 $BOOTS); do
  echo "boot.sh: boot $b of $BOOTS (timeout ${TIMEOUT}s, console $OUT/console-$b.log)"
  t0=$(date +%s)
  rc=0
  lk_boot "$disk" "$OUT/console-$b.log" "$TIMEOUT" || rc=$?
  dt=$(($(date +%s) - t0))
  boot_times+=("$dt")
  echo "boot.sh: boot $b ended after ${dt}s (qemu exit $rc$( ((rc == 124 || rc == 137)) && echo ', TIMED OUT'))"
  mount -o ro,noload,loop "$disk" "$mnt"
  mkdir -p "$OUT/results"
  cp -a "$mnt/var/lib/lk-boot/results/." "$OUT/results/" 2>/dev/null || true
  umount "$mnt"
  if [[ ! -f $OUT/results/boot-$b.done ]]; then
    echo "FAIL boot $b: the check script ran to the end (see console-$b.log)" >>"$OUT/results/boot-$b"
    grep -E 'FAIL|Failed|lk-check|Watchdog|panic' "$OUT/console-$b.log" | tail -n 15 || true
    # A boot that did not finish leaves the next one nothing sound to check.
    break
  fi
done

# ---- verdict ----------------------------------------------------------------------------------
echo "---- results"
cat "$OUT"/results/boot-[0-9] 2>/dev/null | tee "$OUT/results.txt"
[[ -f $OUT/results/exposure ]] && echo "systemd-analyze security lunkeeper.service: $(cat "$OUT/results/exposure")"
[[ -f $OUT/results/boot-1.security ]] && grep -E '^→|Overall' "$OUT/results/boot-1.security"
passed=$(grep -c '^PASS ' "$OUT/results.txt" || true)
failed=$(grep -c '^FAIL ' "$OUT/results.txt" || true)
for b in $(seq 1 $BOOTS); do
  if [[ ! -f $OUT/results/boot-$b.done ]] && ! grep -q "^FAIL boot $b: the check script" "$OUT/results.txt"; then
    echo "FAIL boot $b: not run" | tee -a "$OUT/results.txt"
    failed=$((failed + 1))
  fi
done
echo "boot.sh: image ${t_image}s, boots ${boot_times[*]/%/s}, total $(($(date +%s) - t_start))s; results in $OUT"
echo "boot: $passed passed, $failed failed"
((failed == 0 && passed > 0))
