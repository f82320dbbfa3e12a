#!/usr/bin/env bash
# image.sh: builds the Debian 12 (bookworm) root file system that tests/boot/boot.sh boots, and
# caches it. Prints the cache directory, which holds:
#     base.raw      ext4 file system image (sparse) of the root, without lunkeeper
#     vmlinuz       the image's own kernel (linux-image-amd64), booted with qemu -kernel
#     initrd.img    its initramfs (virtio disk + ext4 modules only)
#     build.log     debootstrap and chroot output; build-seconds: how long the build took
#
#   tests/boot/image.sh [--force]
#
# The image: debootstrap --variant=minbase plus systemd (PID 1), udev, dbus, open-iscsi,
# multipath-tools, e2fsprogs, python3, kmod, iproute2, prometheus-node-exporter (its textfile
# collector reads lunkeeper's metrics file) and the Debian kernel, whose modules include
# iscsi_tcp, dm_multipath and the LIO target (target_core_mod, iscsi_target_mod,
# target_core_file). No recommends. Root has no password (serial console login for debugging).
# Timers that would start work during a test boot (apt, e2scrub, fstrim) are masked and the
# journal is persistent, so a boot can read the previous boot's shutdown.
#
# The cache (/var/cache/lunkeeper-boot/<hash>/, LK_BOOT_CACHE to move it) is keyed on the
# sha256 of this script: any edit here rebuilds; an unchanged script reuses the image. Older
# cache entries are removed. Needs root; installs debootstrap, qemu-utils and
# qemu-system-x86 with apt-get when missing. LK_BOOT_MIRROR overrides the mirror.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MIRROR=${LK_BOOT_MIRROR:-http://deb.debian.org/debian}
CACHE_ROOT=${LK_BOOT_CACHE:-/var/cache/lunkeeper-boot}
SUITE=bookworm
PACKAGES=systemd,systemd-sysv,udev,dbus,open-iscsi,multipath-tools,e2fsprogs,python3,kmod,iproute2,procps,linux-image-amd64,initramfs-tools,zstd,prometheus-node-exporter
IMAGE_SIZE=3G

force=0
[[ ${1:-} == --force ]] && force=1

key=$(sha256sum "$HERE/image.sh" | cut -c1-16)
dir=$CACHE_ROOT/$key
if ((force == 0)) && [[ -f $dir/complete ]]; then
  echo "$dir"
  exit 0
fi

if ((EUID != 0)); then
  echo "image.sh: must run as root (debootstrap, chroot)" >&2
  exit 2
fi

need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
if ((${#need[@]})); then
  echo "image.sh: installing ${need[*]}" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi

t0=$(date +%s)
rm -rf "$CACHE_ROOT"/*/ 2>/dev/null || true
mkdir -p "$dir"
root=$dir/root
log=$dir/build.log
: >"$log"
cleanup() {
  local m
  for m in dev/pts dev proc sys; do
    mountpoint -q "$root/$m" 2>/dev/null && umount -l "$root/$m"
  done
  return 0
}
trap cleanup EXIT

echo "image.sh: debootstrap $SUITE (minbase + $PACKAGES) from $MIRROR into $root" >&2
# Two stages, so that the settings below are in place before any package is configured: dpkg
# without fsync (the tree becomes an image file; a crash means a rebuild anyway), and one small
# initramfs generated once, when the kernel is configured.
if ! debootstrap --foreign --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$MIRROR" >>"$log" 2>&1; then
  tail -n 30 "$log" >&2
  echo "image.sh: debootstrap (first stage) failed; full log in $log" >&2
  exit 1
fi
t_download=$(date +%s)
echo "image.sh: first stage (download, unpack) took $((t_download - t0))s" >&2
mkdir -p "$root/etc/dpkg/dpkg.cfg.d" "$root/etc/initramfs-tools/conf.d"
echo force-unsafe-io >"$root/etc/dpkg/dpkg.cfg.d/lunkeeper-boot-unsafe-io"
# A small initramfs: the root is ext4 on virtio-blk, nothing else is needed to mount it.
printf 'MODULES=list\nCOMPRESS=zstd\n' >"$root/etc/initramfs-tools/conf.d/lunkeeper-boot"
# (A hook rather than /etc/initramfs-tools/modules, a conffile dpkg would ask about.)
mkdir -p "$root/etc/initramfs-tools/hooks"
cat >"$root/etc/initramfs-tools/hooks/lunkeeper-boot" <<'HOOK'
#!/bin/sh
[ "$1" = prereqs ] && exit 0
. /usr/share/initramfs-tools/hook-functions
force_load virtio_pci
force_load virtio_blk
force_load ext4
HOOK
chmod 0755 "$root/etc/initramfs-tools/hooks/lunkeeper-boot"
for m in dev dev/pts proc sys; do mkdir -p "$root/$m"; done
if ! chroot "$root" /debootstrap/debootstrap --second-stage >>"$log" 2>&1; then
  tail -n 30 "$log" >&2
  echo "image.sh: debootstrap (second stage) failed; full log in $log" >&2
  exit 1
fi
rm -f "$root/etc/dpkg/dpkg.cfg.d/lunkeeper-boot-unsafe-io"
echo "image.sh: second stage (configure) took $(($(date +%s) - t_download))s" >&2

# ---- configuration inside the image ----------------------------------------------------------
echo lkboot >"$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tlkboot\n' >"$root/etc/hosts"
printf '/dev/vda\t/\text4\terrors=remount-ro\t0\t1\n' >"$root/etc/fstab"
# The journal survives reboots: boot N+1 reads boot N's shutdown from it.
mkdir -p "$root/var/log/journal"
mkdir -p "$root/etc/systemd/journald.conf.d"
printf '[Journal]\nStorage=persistent\n' >"$root/etc/systemd/journald.conf.d/persistent.conf"
# Nothing scheduled that would compete with a test boot for the (emulated) CPUs.
for u in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service \
  fstrim.timer systemd-tmpfiles-clean.timer man-db.timer; do
  ln -sf /dev/null "$root/etc/systemd/system/$u"
done
# Root without a password, for a look around on the serial console when debugging.
chroot "$root" passwd -d root >>"$log" 2>&1
chroot "$root" apt-get clean >>"$log" 2>&1
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin

# The kernel's storage modules the scenario needs must be there.
kver=$(basename "$(find "$root/lib/modules" -mindepth 1 -maxdepth 1 -type d | sort -V | tail -n 1)")
for m in iscsi_tcp dm_multipath target_core_mod iscsi_target_mod target_core_file; do
  if ! chroot "$root" modinfo -k "$kver" "$m" >/dev/null 2>&1; then
    echo "image.sh: module $m missing from kernel $kver" >&2
    exit 1
  fi
done
cp "$root/boot/vmlinuz-$kver" "$dir/vmlinuz"
cp "$root/boot/initrd.img-$kver" "$dir/initrd.img"
echo "$kver" >"$dir/kernel-version"

# ---- the disk image: ext4 populated from the tree, no mount needed ---------------------------
rm -f "$dir/base.raw"
truncate -s "$IMAGE_SIZE" "$dir/base.raw"
mkfs.ext4 -q -F -L lkroot -d "$root" "$dir/base.raw" >>"$log" 2>&1
rm -rf --one-file-system "$root"

t1=$(date +%s)
echo $((t1 - t0)) >"$dir/build-seconds"
touch "$dir/complete"
echo "image.sh: built in $((t1 - t0))s: $dir" >&2
echo "$dir"
