# lib.sh: what tests/boot/boot.sh and tests/boot/bench.sh share: the cached image, the .deb, a
# per-run disk with the package installed, and one boot under QEMU. Sourced; the caller sets
# HERE (tests/boot), REPO and OUT, and runs as root.
#
# Environment: LK_BOOT_DEB (a .deb to use instead of building one), LK_BOOT_ACCEL (default tcg,
# as tests/vm/vm.sh: KVM aborts on the machines this runs on), LK_BOOT_MEMORY (default 1G),
# LK_BOOT_CPUS (default 2), LK_BOOT_CACHE (image cache, see image.sh).

IQN=iqn.2026-12.test.lunkeeper:boot
# The LUNs lk-target.sh makes, 64 MiB each; vol2 is added to the file by boot 1's reload.
LUN_BYTES=$((64 * 1024 * 1024))

# lk_image: the cached image directory in $img (built if missing), the time taken in $t_image.
lk_image() {
  local t0
  t0=$(date +%s)
  img=$("$HERE/image.sh" | tail -n 1)
  t_image=$(($(date +%s) - t0))
  echo "$(basename "$0"): image $img ($t_image s here; build took $(cat "$img/build-seconds") s when it was built)"
}

# lk_deb: the package in $deb (built unless LK_BOOT_DEB names one). Returns 1 when it does not
# build.
lk_deb() {
  local t0
  if [[ -n ${LK_BOOT_DEB:-} ]]; then
    deb=$LK_BOOT_DEB
  else
    t0=$(date +%s)
    deb=$(cd "$REPO" && packaging/build-deb.sh 2>"$OUT/build-deb.log" | tail -n 1) || {
      tail -n 20 "$OUT/build-deb.log"
      return 1
    }
    echo "$(basename "$0"): built $deb in $(($(date +%s) - t0)) s"
  fi
  [[ $deb == /* ]] || deb=$REPO/$deb
  [[ -f $deb ]] || { echo "$(basename "$0"): no .deb at $deb" >&2; return 1; }
}

lk_umount() { # MNT: the disk and the chroot's bind mounts
  local m
  for m in dev/pts dev proc sys; do
    mountpoint -q "$1/$m" 2>/dev/null && umount "$1/$m"
  done
  mountpoint -q "$1" && umount "$1"
  return 0
}

# lk_disk DISK MNT: a sparse copy of the image (the cached base stays clean) with the .deb
# installed by `apt-get install` in a chroot (nothing started), the LIO target unit ordered
# before lunkeeper and open-iscsi (tests/boot/guest/lk-target.*), its three LUN files, and
# the initiator name. Left mounted on MNT. Returns 1 when apt fails (its log in $OUT).
lk_disk() {
  local disk=$1 mnt=$2 m v
  mkdir -p "$mnt"
  # (Called in a condition, so `set -e` does not apply here: each step that matters says so.)
  cp --sparse=always "$img/base.raw" "$disk" || return 1
  mount -o loop "$disk" "$mnt" || return 1
  for m in dev dev/pts proc sys; do mount --bind "/$m" "$mnt/$m" || return 1; done
  cp "$deb" "$mnt/tmp/" || return 1
  printf '#!/bin/sh\nexit 101\n' >"$mnt/usr/sbin/policy-rc.d"
  chmod 0755 "$mnt/usr/sbin/policy-rc.d"
  if ! chroot "$mnt" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    "/tmp/$(basename "$deb")" >"$OUT/apt-install.log" 2>&1; then
    tail -n 20 "$OUT/apt-install.log"
    return 1
  fi
  rm -f "$mnt/usr/sbin/policy-rc.d" "$mnt/tmp/$(basename "$deb")"
  chroot "$mnt" dpkg-query -W -f '${Package} ${Version} ${Status}\n' lunkeeper | tee "$OUT/installed.txt"
  for m in dev/pts dev proc sys; do umount "$mnt/$m"; done

  install -D -m 0755 "$HERE/guest/lk-target.sh" "$mnt/usr/local/lib/lk-boot/lk-target.sh"
  install -m 0644 "$HERE/guest/lk-target.service" "$mnt/etc/systemd/system/"
  mkdir -p "$mnt/etc/systemd/system/multi-user.target.wants" "$mnt/etc/systemd/system/lunkeeper.service.wants"
  ln -sf /etc/systemd/system/lk-target.service "$mnt/etc/systemd/system/multi-user.target.wants/"
  ln -sf /etc/systemd/system/lk-target.service "$mnt/etc/systemd/system/lunkeeper.service.wants/"
  echo "InitiatorName=iqn.2026-12.test.lunkeeper:initiator" >"$mnt/etc/iscsi/initiatorname.iscsi"
  mkdir -p "$mnt/var/lib/lk-target" "$mnt/var/lib/lk-boot"
  for v in vol0 vol1 vol2; do truncate -s "$LUN_BYTES" "$mnt/var/lib/lk-target/$v.img"; done
}

# lk_wwid VOLUME: the WWID the kernel reads for lk-target.sh's LUN of that volume: LIO's NAA
# 6h designator is "6001405" + the first 25 hex digits of the unit serial, which lk-target.sh
# sets from an md5 of the volume's name.
lk_wwid() {
  local h
  h=$(printf 'lunkeeper-boot/%s' "$1" | md5sum | cut -c1-32)
  echo "36001405${h:0:25}"
}

# lk_boot DISK CONSOLE TIMEOUT: one boot of the disk under QEMU (the image's own kernel and
# initrd, root on virtio, systemd as PID 1, serial console to CONSOLE); until the guest powers
# off or TIMEOUT seconds pass. Returns qemu's (or timeout's) exit code.
lk_boot() {
  local accel=${LK_BOOT_ACCEL:-tcg} rc=0
  local -a accel_args=(-accel "$accel")
  [[ $accel == tcg ]] && accel_args=(-accel tcg,thread=multi)
  timeout --kill-after=10 "$3" qemu-system-x86_64 "${accel_args[@]}" -nodefaults -no-reboot \
    -m "${LK_BOOT_MEMORY:-1G}" -smp "${LK_BOOT_CPUS:-2}" \
    -kernel "$img/vmlinuz" -initrd "$img/initrd.img" \
    -append "root=/dev/vda rw console=ttyS0 panic=5 mitigations=off systemd.show_status=1" \
    -drive "file=$1,format=raw,if=virtio" \
    -device virtio-rng-pci -nic none -display none -monitor none \
    -serial "file:$2" </dev/null >"${2%.log}.qemu.log" 2>&1 || rc=$?
  return "$rc"
}
