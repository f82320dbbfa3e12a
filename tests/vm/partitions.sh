#!/usr/bin/env bash
# Partitioned volumes (issue 10, item 3), one boot. A partition table written with sfdisk on a
# 2-portal multipath volume: multipath-tools' udev rule makes the kpartx maps <wwid>-part1/2,
# and lunkeeper's udev rule names them /dev/lunkeeper/vol-part1/2. An ext4 on part1, mounted
# through /dev/lunkeeper/vol-part1 and written. Set absent while mounted: apply reports the
# volume blocked naming the partition and its mount point, and removes nothing. Unmounted but
# partition 2 held by a dm device stacked on it (as LVM would): blocked naming partition 2.
# Then free: the partition maps are removed by lunkeeper before the map is flushed, and no dm
# device, session or disk of the volume is left.
# Run on the host: tests/vm/vm.sh tests/vm/partitions.sh
. "$(dirname "${BASH_SOURCE[0]}")/guest-lib.sh"

LK=${LUNKEEPER_BIN:?}
CONF=/etc/lunkeeper/volumes.toml
P1=127.0.0.1:3260
P2=127.0.0.2:3260
IQN=iqn.2026-11.test.lunkeeper:parts
MNT=$LK_STATE/mnt # the host's /mnt is read-only in the guest
APPLY_LOG=""
APPLY_RC=0
N=0

lk_boot_stack
install -D -m 0644 "$LK_REPO/rules/90-lunkeeper.rules" /etc/udev/rules.d/90-lunkeeper.rules
udevadm control --reload
lk_target parts "$IQN" --luns "0" --portals "$P1 $P2" --size 64M
W=$(lk_wwid parts 0)
IQN1=iqn.2026-11.test.lunkeeper:parts-single
lk_target single "$IQN1" --luns "0" --portals "$P1" --size 32M

mkdir -p /etc/lunkeeper
write_conf() { # STATE
  cat >"$CONF" <<TOML
[defaults]
replacement_timeout = 5
login_timeout = 10

[[volume]]
name = "vol"
target = "$IQN"
portals = ["$P1", "$P2"]
lun = 0
state = "$1"

[[volume]]
name = "one"
target = "$IQN1"
portals = ["$P1"]
lun = 0
multipath = false
TOML
}
lk_apply() {
  N=$((N + 1))
  APPLY_LOG=$OUT/apply-$N.log
  APPLY_RC=0
  LUNKEEPER_LOG=info timeout 300 "$LK" --config "$CONF" apply --timeout 60 >"$APPLY_LOG" 2>"$APPLY_LOG.err" || APPLY_RC=$?
  lk_log "apply $N: exit $APPLY_RC: $(tr '\n' '|' <"$APPLY_LOG")"
}
part_dm() { # N: the dm-N of partition N of the volume's map
  local d
  for d in /sys/block/dm-*; do
    if [[ "$(cat "$d/dm/uuid")" == "part$1-mpath-$W" ]]; then
      echo "${d##*/}"
      return 0
    fi
  done
  return 1
}
link_is() { # LINK dm-N: LINK resolves to /dev/dm-N
  [[ "$(readlink -f "$1")" == "/dev/$2" ]]
}
dm_of_volume() { dmsetup ls | grep -c "$W" || true; }
no_dm_left() { [[ "$(dm_of_volume)" == 0 ]]; }
no_links_left() { ! compgen -G '/dev/lunkeeper/vol*' >/dev/null; }

# ---- attach, partition, name.
write_conf present
lk_apply
lk_check_eq "setup: apply exits 0" 0 "$APPLY_RC"
lk_check "setup: the map has two paths" lk_map_has_paths "$W" 2
lk_check_wait "setup: /dev/lunkeeper/vol exists" 20 test -b /dev/lunkeeper/vol
printf 'label: dos\n,24M,L\n,,L\n' | sfdisk -q /dev/lunkeeper/vol >"$OUT/sfdisk.log" 2>&1 || true
lk_fact partitions.md "sfdisk on /dev/lunkeeper/vol" sfdisk -l /dev/lunkeeper/vol
# sfdisk's close of the map makes udev look at it again, and 60-kpartx.rules runs kpartx.
if ! lk_wait_for 30 part_dm 2; then
  lk_log "no kpartx maps after sfdisk; asking udev to look at the map again"
  udevadm trigger --action=change "/dev/mapper/$W" || true
fi
lk_check_wait "udev made the kpartx maps $W-part1 and -part2" 30 part_dm 2
udevadm settle --timeout=30 || true
P1DM=$(part_dm 1 || echo none)
P2DM=$(part_dm 2 || echo none)
lk_check_wait "/dev/lunkeeper/vol-part1 is partition 1 ($P1DM)" 20 link_is /dev/lunkeeper/vol-part1 "$P1DM"
lk_check_wait "/dev/lunkeeper/vol-part2 is partition 2 ($P2DM)" 20 link_is /dev/lunkeeper/vol-part2 "$P2DM"
lk_check "/dev/lunkeeper/vol is still the map" link_is /dev/lunkeeper/vol "$(lk_dm_of_wwid "$W")"
# A multipath = false volume: the kernel's own partition sdXN is named.
lk_check_wait "setup: /dev/lunkeeper/one exists" 20 test -b /dev/lunkeeper/one
printf 'label: dos\n,,L\n' | sfdisk -q /dev/lunkeeper/one >>"$OUT/sfdisk.log" 2>&1 || true
ONE=$(basename "$(readlink -f /dev/lunkeeper/one)")
lk_check_wait "/dev/lunkeeper/one-part1 is ${ONE}1 (multipath = false)" 20 link_is /dev/lunkeeper/one-part1 "${ONE}1"
lk_fact partitions.md "links" ls -l /dev/lunkeeper/
lk_fact partitions.md "dmsetup ls" dmsetup ls
lk_apply
lk_check_eq "a present partitioned volume: apply exits 0" 0 "$APPLY_RC"
lk_check "and changes nothing (no step)" bash -c "! grep -E 'remove partition map|flush' '$APPLY_LOG' '$APPLY_LOG.err'"

# ---- ext4 on part1 through its name, data written.
mkfs.ext4 -q -F /dev/lunkeeper/vol-part1
mkdir -p "$MNT"
mount /dev/lunkeeper/vol-part1 "$MNT"
head -c $((4 << 20)) /dev/urandom >"$MNT/data"
SUM=$(md5sum <"$MNT/data")
sync

# ---- absent while mounted: blocked, named, nothing removed.
write_conf absent
lk_apply
lk_check "mounted: apply refuses (non-zero exit)" test "$APPLY_RC" -ne 0
lk_check "mounted: apply says vol is blocked" grep -Eq '^vol +blocked' "$APPLY_LOG"
lk_check "mounted: the reason names partition 1 and where it is mounted" \
  grep -Fxq "  reason: in use, not detaching: /dev/lunkeeper/vol-part1 (partition 1) is mounted on $MNT" "$APPLY_LOG"
lk_check "mounted: the map keeps both paths" lk_map_has_paths "$W" 2
lk_check_eq "mounted: both partition maps and the map are there" 3 "$(dm_of_volume)"
lk_check_eq "mounted: both sessions stay" 2 "$(lk_sessions "$IQN" | wc -l)"
lk_check "mounted: the file system still works" bash -c "echo more >>'$MNT/more' && sync && findmnt '$MNT'"
echo 3 >/proc/sys/vm/drop_caches
lk_check_eq "mounted: the data reads back" "$SUM" "$(md5sum <"$MNT/data")"
umount "$MNT"

# ---- unmounted, but partition 2 held (a dm device stacked on it, as LVM's would be).
dmsetup create lk-hold --table "0 $(blockdev --getsz "/dev/mapper/$W-part2") linear /dev/mapper/$W-part2 0"
HOLD=$(basename "$(readlink -f /dev/mapper/lk-hold)")
lk_apply
lk_check "held: apply refuses (non-zero exit)" test "$APPLY_RC" -ne 0
lk_check "held: the reason names partition 2 and its holder" \
  grep -Fxq "  reason: in use, not detaching: /dev/lunkeeper/vol-part2 (partition 2) is held by $HOLD" "$APPLY_LOG"
lk_check_eq "held: nothing of the volume removed" 3 "$(dm_of_volume)"
dmsetup remove lk-hold

# ---- free: lunkeeper removes the partition maps, then flushes the map.
"$LK" --config "$CONF" plan >"$OUT/plan-free.log" 2>&1 || true
line_of() { grep -n -F -- "$1" "$OUT/plan-free.log" | head -n 1 | cut -d: -f1; }
PLAN_ORDER="$(line_of "remove partition map $W-part2 of $W") $(line_of "remove partition map $W-part1 of $W") $(line_of "flush multipath map $W")"
in_order() { # A B C: three line numbers, increasing
  (($# == 3)) && (($1 < $2 && $2 < $3))
}
# shellcheck disable=SC2086 # three numbers, split on purpose
lk_check "free: plan removes partition 2, then 1, then flushes the map (lines $PLAN_ORDER)" in_order $PLAN_ORDER
lk_apply
lk_check_eq "free: apply exits 0" 0 "$APPLY_RC"
lk_check "free: apply says vol is absent" grep -Eq '^vol +absent' "$APPLY_LOG"
lk_check "free: lunkeeper removed the partition maps itself" grep -q "remove partition map $W-part1" "$APPLY_LOG.err"
lk_check "free: no dm device of the volume left (dmsetup ls)" no_dm_left
lk_check_eq "free: no session left" "" "$(lk_sessions "$IQN")"
lk_check_eq "free: no disk with the volume's WWID left" "" "$(lk_disks_of_wwid "$W")"
lk_check_wait "free: no /dev/lunkeeper/vol* link left" 20 no_links_left
lk_check "free: WWID gone from /etc/multipath/wwids" bash -c "! grep -q '/$W/' /etc/multipath/wwids"
lk_fact partitions.md "dmsetup ls after the detach" dmsetup ls
lk_apply
lk_check_eq "free: a second apply exits 0 with nothing to do" 0 "$APPLY_RC"

lk_finish
