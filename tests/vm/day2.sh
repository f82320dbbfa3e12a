#!/usr/bin/env bash
# Day-2 scenarios (issue 10), one boot. So far: online resize. An ext4 on a 2-portal multipath
# volume, mounted and written by the checksummed writer; the LIO fileio backstore is grown
# (LIO sends no capacity unit attention, so the host sees nothing by itself); `lunkeeper
# resize` rescans both paths and grows the map; resize2fs grows the mounted file system; the
# data verifies. Then the same with `lunkeeper run` running and `lunkeeper resize` beside it.
# Prints the time from the command to the new size on the map (a figure, not asserted).
# Run on the host: tests/vm/vm.sh tests/vm/day2.sh
. "$(dirname "${BASH_SOURCE[0]}")/guest-lib.sh"

LK=${LUNKEEPER_BIN:?}
CONF=/etc/lunkeeper/volumes.toml
RUNDIR=/run/lunkeeper
STATUS=$RUNDIR/status.json
P1=127.0.0.1:3260
P2=127.0.0.2:3260
IQN=iqn.2026-11.test.lunkeeper:day2
MNT=$LK_STATE/mnt # the host's /mnt is read-only in the guest
MIB=$((1 << 20))
DPID=""

lk_boot_stack
lk_target grow "$IQN" --luns "0" --portals "$P1 $P2" --size 64M
W=$(lk_wwid grow 0)
BS=$(cat "$LK_STATE/targets/grow/backstore.0")

mkdir -p /etc/lunkeeper
cat >"$CONF" <<TOML
[defaults]
replacement_timeout = 5
login_timeout = 10

[[volume]]
name = "vol"
target = "$IQN"
portals = ["$P1", "$P2"]
lun = 0
TOML

# grow_lun BYTES: grow the backstore's file, then tell LIO the new size (no unit attention).
grow_lun() {
  truncate -s "$1" "$LK_BACKSTORE_DIR/$BS.img"
  echo "fd_dev_size=$1" >"$LK_CFG/core/$LK_FILEIO_HBA/$BS/control"
}
map_dev() { echo "/dev/mapper/$(cat "/sys/block/$(lk_dm_of_wwid "$W")/dm/name")"; }
map_bytes() { blockdev --getsize64 "$(map_dev)"; }
# The length in the map's table (sectors) as bytes: what device-mapper serves.
table_bytes() { echo $(($(dmsetup table "$(basename "$(map_dev)")" | awk '{print $2}') * 512)); }
paths_bytes() { # every path's size in bytes, one line each
  local d
  for d in $(lk_disks_of_wwid "$W"); do echo $(($(cat "/sys/block/$d/size") * 512)); done
}
all_paths_are() { [ "$(paths_bytes | sort -u)" = "$1" ]; }
fs_bytes() { df -B1 --output=size "$MNT" | tail -n 1 | tr -d ' '; }
status_size() { # size_bytes of vol in `lunkeeper status --json` (the daemon's while it runs)
  "$LK" --config "$CONF" status --json 2>/dev/null | python3 -c "
import json, sys
print([v for v in json.load(sys.stdin)['volumes'] if v['name'] == 'vol'][0]['size_bytes'])"
}
status_size_is() { [ "$(status_size)" = "$1" ]; }
start_daemon() {
  LUNKEEPER_LOG=info "$LK" --config "$CONF" run >>"$OUT/daemon.log" 2>&1 &
  DPID=$!
  lk_log "daemon started (pid $DPID)"
}
stop_daemon() {
  kill -TERM "$DPID"
  local i
  for i in $(seq 1 300); do kill -0 "$DPID" 2>/dev/null || return 0; sleep 0.1; done
  return 1
}
daemon_ready() {
  python3 -c "
import json
s = json.load(open('$STATUS'))
assert [v for v in s['volumes'] if v['name'] == 'vol'][0]['state'] == 'ready'" 2>/dev/null
}

# resize_round LABEL NEW_BYTES: grow the LUN, run `lunkeeper resize vol`, check the map, the
# paths and status, grow the file system. Sets RESIZE_MS.
resize_round() {
  local label=$1 new=$2 before fs_before rc=0 t0 t1 log=$OUT/resize-$1.log
  before=$(map_bytes)
  fs_before=$(fs_bytes)
  grow_lun "$new"
  lk_check_eq "$label: the map keeps its size until asked (LIO sends no unit attention)" "$before" "$(map_bytes)"
  t0=$(_lk_now_ms)
  LUNKEEPER_LOG=lunkeeper=debug timeout 120 "$LK" --config "$CONF" resize vol >"$log" 2>"$log.err" || rc=$?
  t1=$(_lk_now_ms)
  RESIZE_MS=$((t1 - t0))
  lk_log "$label: resize exit $rc in ${RESIZE_MS} ms: $(tr '\n' '|' <"$log") steps: $(grep -E 'INFO|WARN|looked' "$log.err" | tr '\n' '|')"
  lk_check_eq "$label: lunkeeper resize exits 0" 0 "$rc"
  lk_check "$label: it says grown and that the file system is the user's" \
    grep -q "vol: grown from .* grow the file system on it yourself" "$log"
  lk_check_eq "$label: the map has the new size (blockdev --getsize64)" "$new" "$(map_bytes)"
  lk_check_eq "$label: the map's table has the new length (dmsetup table)" "$new" "$(table_bytes)"
  lk_check_eq "$label: both paths report the new size" "$new" "$(paths_bytes | sort -u | tr '\n' ' ' | sed 's/ $//')"
  lk_check_eq "$label: both paths are still in the map" 2 "$(lk_dm_slaves "$(lk_dm_of_wwid "$W")" | wc -w)"
  lk_check_wait "$label: status shows size_bytes = the new size" 15 status_size_is "$new"
  lk_check "$label: resize2fs grows the mounted file system" resize2fs "$(map_dev)"
  lk_check "$label: the file system is larger ($fs_before before)" test "$(fs_bytes)" -gt "$fs_before"
  lk_check_eq "$label: no I/O error while resizing" 0 "$(lk_io_errors io)"
}

# ---- attach, make and mount a file system, start writing.
rc=0
timeout 300 "$LK" --config "$CONF" apply --timeout 90 >"$OUT/apply-1.log" 2>&1 || rc=$?
lk_check_eq "setup: apply exits 0" 0 "$rc"
lk_check "setup: the map has two paths" lk_map_has_paths "$W" 2
lk_check_eq "setup: the map is 64 MiB" $((64 * MIB)) "$(map_bytes)"
mkfs.ext4 -q -F "$(map_dev)"
mkdir -p "$MNT"
mount "$(map_dev)" "$MNT"
# The writer's file: allocated now, so the writer's O_DIRECT writes land in place.
dd if=/dev/zero of="$MNT/io.dat" bs=4k count=512 status=none conv=fsync
lk_io_start io "$MNT/io.dat" 512
writing() { (($(lk_io_acked io) > 0)); }
lk_check_wait "setup: the writer is writing" 60 writing

# ---- a: no daemon.
ACKED0=$(lk_io_acked io)
resize_round a $((96 * MIB))
lk_log "FIGURE a: lunkeeper resize (no daemon), command to new size on the map: ${RESIZE_MS} ms"
echo "a: lunkeeper resize without the daemon, command to new size on the map: ${RESIZE_MS} ms" >>"$OUT/figures"

# ---- b: the daemon runs; resize beside it (no planner lock needed).
start_daemon
lk_check_wait "b: the daemon has the volume ready" 60 daemon_ready
rc=0
timeout 60 "$LK" --config "$CONF" apply --timeout 10 >"$OUT/apply-beside-daemon.log" 2>&1 || rc=$?
lk_check_eq "b: apply beside the daemon is refused (exit 3), resize is not" 3 "$rc"
resize_round b $((128 * MIB))
lk_log "FIGURE b: lunkeeper resize beside the daemon, command to new size on the map: ${RESIZE_MS} ms"
echo "b: lunkeeper resize beside the daemon, command to new size on the map: ${RESIZE_MS} ms" >>"$OUT/figures"
lk_check "b: the daemon is still running" kill -0 "$DPID"
lk_check "b: the daemon logged no failed step" bash -c "! grep -E 'result=failed|panicked' '$OUT/daemon.log'"
lk_check "b: the daemon stops on SIGTERM" stop_daemon

# ---- the data written across both resizes reads back.
lk_check "io: the writer stops" lk_io_stop io
ACKED=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["acked"])' "$LK_STATE/io/io/acks.json")
lk_log "io: $ACKED writes acknowledged in all, $ACKED0 of them before the first resize"
lk_check "io: the writer kept writing through both resizes" test "$ACKED" -gt "$ACKED0"
lk_check_eq "io: no I/O error" 0 "$(lk_io_errors io)"
lk_check "io: every acknowledged write reads back intact" lk_io_verify io
lk_check "fs: unmounts" umount "$MNT"
lk_check "fs: fsck is clean" e2fsck -f -n "$(map_dev)"

lk_finish
