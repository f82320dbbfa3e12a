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
# (seconds per boot, default 420), LK_BOOT_ACCEL (default tcg, as tests/vm/vm.sh: KVM aborts on
# the machines this runs on), LK_BOOT_MEMORY (default 1G), LK_BOOT_CPUS (default 2).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
BOOTS=3
TIMEOUT=${LK_BOOT_TIMEOUT:-420}
ACCEL=${LK_BOOT_ACCEL:-tcg}
OUT=${LK_BOOT_OUT:-$HERE/out/$(date +%Y%m%d-%H%M%S)}
IQN=iqn.2026-12.test.lunkeeper:boot

if ((EUID != 0)); then
  echo "boot.sh: must run as root (loop mounts, chroot)" >&2
  exit 2
fi
rm -rf "$OUT"
mkdir -p "$OUT"
t_start=$(date +%s)

# ---- image and package -----------------------------------------------------------------------
t0=$(date +%s)
img=$("$HERE/image.sh" | tail -n 1)
t_image=$(($(date +%s) - t0))
echo "boot.sh: image $img ($t_image s here; build took $(cat "$img/build-seconds") s when it was built)"

if [[ -n ${LK_BOOT_DEB:-} ]]; then
  deb=$LK_BOOT_DEB
else
  t0=$(date +%s)
  deb=$(cd "$REPO" && packaging/build-deb.sh 2>"$OUT/build-deb.log" | tail -n 1) || {
    tail -n 20 "$OUT/build-deb.log"
    echo "boot: 0 passed, 1 failed (the .deb did not build)"
    exit 1
  }
  echo "boot.sh: built $deb in $(($(date +%s) - t0)) s"
fi
[[ $deb == /* ]] || deb=$REPO/$deb
[[ -f $deb ]] || { echo "boot.sh: no .deb at $deb" >&2; exit 1; }

# ---- the per-run disk --------------------------------------------------------------------------
disk=$OUT/disk.raw
mnt=$OUT/mnt
mkdir -p "$mnt"
unmount_all() {
  local m
  for m in dev/pts dev proc sys; do
    mountpoint -q "$mnt/$m" 2>/dev/null && umount "$mnt/$m"
  done
  mountpoint -q "$mnt" && umount "$mnt"
  return 0
}
trap unmount_all EXIT

t0=$(date +%s)
cp --sparse=always "$img/base.raw" "$disk"
mount -o loop "$disk" "$mnt"
for m in dev dev/pts proc sys; do mount --bind "/$m" "$mnt/$m"; done
cp "$deb" "$mnt/tmp/"
# Nothing is started inside the chroot.
printf '#!/bin/sh\nexit 101\n' >"$mnt/usr/sbin/policy-rc.d"
chmod 0755 "$mnt/usr/sbin/policy-rc.d"
if ! chroot "$mnt" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
  "/tmp/$(basename "$deb")" >"$OUT/apt-install.log" 2>&1; then
  tail -n 20 "$OUT/apt-install.log"
  echo "boot: 0 passed, 1 failed (apt-get install of the .deb failed)"
  exit 1
fi
rm -f "$mnt/usr/sbin/policy-rc.d" "$mnt/tmp/$(basename "$deb")"
chroot "$mnt" dpkg-query -W -f '${Package} ${Version} ${Status}\n' lunkeeper | tee "$OUT/installed.txt"
for m in dev/pts dev proc sys; do umount "$mnt/$m"; done

# The test's target, checks and configuration.
install -D -m 0755 "$HERE/guest/lk-target.sh" "$mnt/usr/local/lib/lk-boot/lk-target.sh"
install -D -m 0755 "$HERE/guest/lk-check.sh" "$mnt/usr/local/lib/lk-boot/lk-check.sh"
install -m 0644 "$HERE/guest/lk-target.service" "$HERE/guest/lk-check.service" "$mnt/etc/systemd/system/"
mkdir -p "$mnt/etc/systemd/system/multi-user.target.wants" "$mnt/etc/systemd/system/lunkeeper.service.wants"
ln -sf /etc/systemd/system/lk-target.service "$mnt/etc/systemd/system/multi-user.target.wants/"
ln -sf /etc/systemd/system/lk-target.service "$mnt/etc/systemd/system/lunkeeper.service.wants/"
ln -sf /etc/systemd/system/lk-check.service "$mnt/etc/systemd/system/multi-user.target.wants/"
[[ -L $mnt/etc/systemd/system/multi-user.target.wants/lunkeeper.service ]] ||
  echo "boot.sh: warning: the package did not enable lunkeeper.service" >&2
# lunkeeper's info lines (its "ready elapsed_ms=..." among them) in the journal, for the checks.
mkdir -p "$mnt/etc/systemd/system/lunkeeper.service.d"
printf '[Service]\nEnvironment=LUNKEEPER_LOG=info\n' >"$mnt/etc/systemd/system/lunkeeper.service.d/boot-test-log.conf"
echo "InitiatorName=iqn.2026-12.test.lunkeeper:initiator" >"$mnt/etc/iscsi/initiatorname.iscsi"
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
mkdir -p "$mnt/mnt/vol0" "$mnt/var/lib/lk-target" "$mnt/var/lib/lk-boot"
for v in vol0 vol1 vol2; do truncate -s 64M "$mnt/var/lib/lk-target/$v.img"; done
mkfs.ext4 -q -F -L vol0 "$mnt/var/lib/lk-target/vol0.img"
umount "$mnt"
echo "boot.sh: run disk ready in $(($(date +%s) - t0)) s: $disk"

# ---- three boots -------------------------------------------------------------------------------
accel_args=(-accel "$ACCEL")
[[ $ACCEL == tcg ]] && accel_args=(-accel tcg,thread=multi)
boot_times=()
for b in $(seq 1 $BOOTS); do
  echo "boot.sh: boot $b of $BOOTS (timeout ${TIMEOUT}s, console $OUT/console-$b.log)"
  t0=$(date +%s)
  set +e
  timeout --kill-after=10 "$TIMEOUT" qemu-system-x86_64 "${accel_args[@]}" -nodefaults -no-reboot \
    -m "${LK_BOOT_MEMORY:-1G}" -smp "${LK_BOOT_CPUS:-2}" \
    -kernel "$img/vmlinuz" -initrd "$img/initrd.img" \
    -append "root=/dev/vda rw console=ttyS0 panic=5 mitigations=off systemd.show_status=1" \
    -drive "file=$disk,format=raw,if=virtio" \
    -device virtio-rng-pci -nic none -display none -monitor none \
    -serial "file:$OUT/console-$b.log" </dev/null >"$OUT/qemu-$b.log" 2>&1
  rc=$?
  set -e
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
