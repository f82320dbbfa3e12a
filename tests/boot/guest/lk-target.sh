#!/bin/bash
# lk-target.sh (in the guest, run by lk-target.service before lunkeeper): an LIO iSCSI target
# on this machine with two portals (127.0.0.1 and 127.0.0.2 on lo) and one LUN per volume.
# The LUNs are fileio backstores on files under /var/lib/lk-target, so their contents survive
# reboots, and each has a fixed unit serial, so its WWID is the same at every boot.
set -euo pipefail
CFG=/sys/kernel/config/target
IQN=iqn.2026-12.test.lunkeeper:boot
STORE=/var/lib/lk-target
VOLUMES="vol0 vol1 vol2"
SIZE=$((64 * 1024 * 1024))

modprobe -a configfs target_core_mod target_core_file iscsi_target_mod
mountpoint -q /sys/kernel/config || mount -t configfs configfs /sys/kernel/config
ip link set lo up
ip -4 addr show dev lo | grep -q ' 127\.0\.0\.2/' || ip addr add 127.0.0.2/8 dev lo

mkdir -p "$STORE"
tpg=$CFG/iscsi/$IQN/tpgt_1
mkdir -p "$tpg"
lun=0
for v in $VOLUMES; do
  f=$STORE/$v.img
  [[ -e $f ]] || truncate -s "$SIZE" "$f"
  bs=$CFG/core/fileio_$lun/$v
  mkdir -p "$bs"
  echo "fd_dev_name=$f,fd_dev_size=$SIZE" >"$bs/control"
  # A fixed serial per volume: the WWID (36001405 + serial digits) is stable across boots.
  h=$(printf 'lunkeeper-boot/%s' "$v" | md5sum | cut -c1-32)
  echo "${h:0:8}-${h:8:4}-${h:12:4}-${h:16:4}-${h:20:12}" >"$bs/wwn/vpd_unit_serial"
  echo 1 >"$bs/enable"
  mkdir -p "$tpg/lun/lun_$lun"
  ln -s "$bs" "$tpg/lun/lun_$lun/$v"
  lun=$((lun + 1))
done
mkdir -p "$tpg/np/127.0.0.1:3260" "$tpg/np/127.0.0.2:3260"
echo 1 >"$tpg/attrib/generate_node_acls"
echo 1 >"$tpg/attrib/cache_dynamic_acls"
echo 0 >"$tpg/attrib/demo_mode_write_protect"
echo 0 >"$tpg/attrib/authentication"
echo 1 >"$tpg/enable"
echo "lk-target: $IQN luns [$VOLUMES] on 127.0.0.1:3260 and 127.0.0.2:3260"
