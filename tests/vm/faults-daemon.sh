#!/usr/bin/env bash
# Fault rows of issue 8 that involve the daemon or the host lock, in one boot:
#   i. `apply` with a different file while the daemon runs: refused (exit 3), nothing of the
#      daemon's detached;
#   f. iscsid, multipathd, udevd killed while the daemon runs: status names each; started
#      again: converges;
#   e. the LUN behind an attached volume swapped on the array (another backstore at the same LUN
#      number on one portal's TPG, then the session recovers): the path is re-read, taken out of
#      the map, never added back; the volume is blocked naming both WWIDs within 10 s; data
#      through the remaining path verifies;
#   b. kill -9 of the daemon during reloads that add two volumes and remove one: restart
#      converges, nothing left of the removed volume, no duplicate session;
#   h. state directory read-only: `apply` exits 3 before any change on the host.
# Run on the host: tests/vm/vm.sh tests/vm/faults-daemon.sh
. "$(dirname "${BASH_SOURCE[0]}")/guest-lib.sh"

LK=${LUNKEEPER_BIN:?}
CONF_DIR=/etc/lunkeeper
CONF=$CONF_DIR/volumes.toml
STATUS=/run/lunkeeper/status.json
NOTIFY_LOG=$OUT/notify.log
P1=127.0.0.1:3260
P2=127.0.0.2:3260
IQN=iqn.2026-11.test.lunkeeper:faults
OTHER=iqn.2026-11.test.lunkeeper:other
DPID=""

start_daemon() {
  NOTIFY_SOCKET=/run/lk-notify.sock LUNKEEPER_LOG=info "$LK" --config "$CONF" run >>"$OUT/daemon.log" 2>&1 &
  DPID=$!
  lk_log "daemon started (pid $DPID)"
}
stop_daemon() {
  kill -TERM "$DPID"
  local i
  for i in $(seq 1 300); do kill -0 "$DPID" 2>/dev/null || return 0; sleep 0.1; done
  return 1
}
kill9_daemon() {
  kill -KILL "$DPID"
  wait "$DPID" 2>/dev/null || true
  lk_log "daemon killed with SIGKILL"
}
st() { # PYTHON-EXPR over s (status.json)
  python3 -c "
import json
s = json.load(open('$STATUS'))
vol = {v['name']: v for v in s['volumes']}
print($1)" 2>/dev/null
}
st_is() { [ "$(st "$1")" = "$2" ]; }
st_has() { st "$1" | grep -q -- "$2"; }
write_and_rename() {
  cat >"$CONF_DIR/.volumes.toml.tmp" && mv "$CONF_DIR/.volumes.toml.tmp" "$CONF"
}
volume_block() { # NAME LUN STATE PORTALS...
  local name=$1 lun=$2 state=$3
  shift 3
  local portals
  portals=$(printf '"%s", ' "$@")
  printf '[[volume]]\nname = "%s"\ntarget = "%s"\nportals = [%s]\nlun = %s\nstate = "%s"\n\n' \
    "$name" "$IQN" "${portals%, }" "$lun" "$state"
}
all_ready() { # NAME...: every named volume is ready in status.json
  local n
  for n in "$@"; do st_is "vol['$n']['state']" ready || return 1; done
}
no_map() { ! lk_dm_of_wwid "$1" >/dev/null 2>&1; }
one_session_per_portal() {
  local s p seen=""
  for s in $(lk_sessions "$IQN"); do
    p=$(lk_session_portal "$s")
    case " $seen " in *" $p "*) return 1 ;; esac
    seen="$seen $p"
  done
}
not_registered() { ! grep -q "/$1/" /etc/multipath/wwids; }
sessions_of() { lk_sessions "$IQN" | tr '\n' ' ' | sed 's/ $//'; }
node_records() { find /etc/iscsi/nodes -mindepth 1 -maxdepth 1 2>/dev/null | sort | tr '\n' ' '; }
slaves_of() { lk_dm_slaves "$(lk_dm_of_wwid "$1")" | tr '\n' ' ' | sed 's/ $//'; }

lk_boot_stack
lk_target f "$IQN" --luns "0 1 2 3 4" --portals "$P1 $P2" --tpg-per-portal
lk_target o "$OTHER" --luns "0" --portals "$P1"
W=()
for l in 0 1 2 3 4; do W[$l]=$(lk_wwid f "$l"); done
install -D -m 0644 "$LK_REPO/rules/90-lunkeeper.rules" /etc/udev/rules.d/90-lunkeeper.rules
udevadm control --reload
(python3 "$LK_VM_DIR/notify-listener.py" /run/lk-notify.sock "$NOTIFY_LOG" &)
lk_wait_for 10 test -S /run/lk-notify.sock

mkdir -p "$CONF_DIR"
{ volume_block r0 0 present "$P1" "$P2"; volume_block r1 1 present "$P1" "$P2"; } | write_and_rename
start_daemon
lk_check_wait "start: r0 and r1 ready" 90 all_ready r0 r1

# (i) apply with another file while the daemon runs.
OWNED_BEFORE=$(md5sum </var/lib/lunkeeper/owned.json)
SESSIONS_BEFORE=$(sessions_of)
mkdir -p /etc/lk-other
printf '[[volume]]\nname = "x"\ntarget = "%s"\nportals = ["%s"]\nlun = 0\n' "$OTHER" "$P1" >/etc/lk-other/volumes.toml
set +e
"$LK" --config /etc/lk-other/volumes.toml apply >"$OUT/checks/i-apply.out" 2>&1
RC=$?
set -e
lk_log "i: apply beside the daemon exited $RC: $(head -c 300 "$OUT/checks/i-apply.out")"
lk_check_eq "i: apply beside the daemon exits 3" 3 "$RC"
lk_check "i: its message says the daemon manages the host" grep -qi daemon "$OUT/checks/i-apply.out"
lk_check_eq "i: sessions unchanged" "$SESSIONS_BEFORE" "$(sessions_of)"
lk_check "i: no session to the other file's target" test -z "$(lk_sessions "$OTHER")"
lk_check "i: r0 map has 2 slaves" lk_map_has_paths "${W[0]}" 2
lk_check "i: r1 map has 2 slaves" lk_map_has_paths "${W[1]}" 2
lk_check_eq "i: owned.json unchanged" "$OWNED_BEFORE" "$(md5sum </var/lib/lunkeeper/owned.json)"

# (f) iscsid down when a volume is added: status names it; back: converges.
pkill -x iscsid
lk_wait_for 30 bash -c '! pgrep -x iscsid >/dev/null'
{ volume_block r0 0 present "$P1" "$P2"; volume_block r1 1 present "$P1" "$P2";
  volume_block r2 2 present "$P1" "$P2"; } | write_and_rename
lk_check_wait "f: status names iscsid while it is down" 20 st_has "s.get('waiting') or ''" iscsid
lk_check "f: STATUS= names iscsid" grep -q "waiting: .*iscsid" "$NOTIFY_LOG"
lk_check "f: nothing detached while iscsid is down" lk_map_has_paths "${W[0]}" 2
(setsid iscsid -f >"$OUT/logs/iscsid-2.log" 2>&1 &)
lk_wait_for 30 lk_iscsid_ready
lk_check_wait "f: waiting cleared once iscsid is back" 30 st_is "s.get('waiting')" None
lk_check_wait "f: r0, r1 and the added r2 ready after iscsid is back" 90 all_ready r0 r1 r2

# (f) multipathd, then udevd, killed -9 while the daemon runs: no event announces it, yet status
# names each within seconds; nothing is detached; started again: converges.
for victim in multipathd udevd; do
  proc=$victim
  [[ $victim == udevd ]] && proc=systemd-udevd
  pkill -9 -x "$proc"
  lk_wait_for 30 bash -c "! pgrep -x $proc >/dev/null"
  lk_check_wait "f: status names $victim while it is down" 20 st_has "s.get('waiting') or ''" "$victim"
  lk_check "f: STATUS= names $victim" grep -q "waiting: .*$victim" "$NOTIFY_LOG"
  lk_check "f: nothing detached while $victim is down" lk_map_has_paths "${W[0]}" 2
  if [[ $victim == multipathd ]]; then
    (setsid multipathd -d -s -v3 >>"$OUT/logs/multipathd-2.log" 2>&1 &)
    lk_wait_for 30 lk_multipathd_ready
  else
    for udevd in /lib/systemd/systemd-udevd /usr/lib/systemd/systemd-udevd; do [[ -x $udevd ]] && break; done
    "$udevd" --daemon
    lk_wait_for 30 udevadm control --ping
  fi
  lk_check_wait "f: waiting cleared once $victim is back" 30 st_is "s.get('waiting')" None
  lk_check_wait "f: r0, r1 and r2 ready after $victim is back" 90 all_ready r0 r1 r2
done

# (e) the LUN behind r0 swapped on P2's TPG: another backstore at LUN 0, then recovery.
dd if=/dev/urandom of=/run/r0.data bs=1M count=4 status=none
dd if=/run/r0.data of="/dev/mapper/${W[0]}" bs=1M oflag=direct conv=fsync status=none
SWAP_BS=f_swapped
SWAP_SERIAL=$(lk_serial_for f-swapped 0)
WS=$(lk_wwid_from_serial "$SWAP_SERIAL")
truncate -s 64M "$LK_BACKSTORE_DIR/$SWAP_BS.img"
mkdir -p "$LK_CFG/core/$LK_FILEIO_HBA/$SWAP_BS"
echo "fd_dev_name=$LK_BACKSTORE_DIR/$SWAP_BS.img,fd_dev_size=$((64 << 20))" >"$LK_CFG/core/$LK_FILEIO_HBA/$SWAP_BS/control"
echo 1 >"$LK_CFG/core/$LK_FILEIO_HBA/$SWAP_BS/enable"
echo "$SWAP_SERIAL" >"$LK_CFG/core/$LK_FILEIO_HBA/$SWAP_BS/wwn/vpd_unit_serial"
T2=$(lk_portal_tpg "$IQN" "$P2")
TPG=$LK_CFG/iscsi/$IQN/tpgt_$T2
SID2=$(lk_session_for "$IQN" "$P2")
H2=$(lk_session_host "$SID2")
D2=""
for hctl in $(lk_host_devices "$H2"); do
  [[ ${hctl##*:} == 0 ]] && D2=$(lk_hctl_disk "$hctl") && HCTL2=$hctl
done
lk_log "e: swapping LUN 0 of tpgt_$T2 ($P2) from ${W[0]} to $WS; path $D2 ($HCTL2)"
echo 0 >"$TPG/enable"
lk_wait_for 30 bash -c "[ \"\$(cat /sys/class/iscsi_session/session$SID2/state)\" != LOGGED_IN ]"
find "$TPG/lun/lun_0" -maxdepth 1 -type l -delete
rmdir "$TPG/lun/lun_0"
mkdir "$TPG/lun/lun_0"
ln -s "$LK_CFG/core/$LK_FILEIO_HBA/$SWAP_BS" "$TPG/lun/lun_0/$SWAP_BS"
T0=$(_lk_now_ms)
echo 1 >"$TPG/enable"
lk_wait_for 60 bash -c "[ \"\$(cat /sys/class/iscsi_session/session$SID2/state)\" = LOGGED_IN ]"
lk_log "e: session $SID2 recovered after $(($(_lk_now_ms) - T0)) ms"
r0_blocked_naming_both() {
  st_is "vol['r0']['state']" blocked && st_has "vol['r0']['reason']" "${W[0]}" && st_has "vol['r0']['reason']" "$WS"
}
in_r0_map() { lk_dm_slaves "$(lk_dm_of_wwid "${W[0]}")" | grep -qx "$1"; }
out_of_r0_map() { ! in_r0_map "$1"; }
lk_check_wait "e: r0 blocked naming both WWIDs within 10 s of the recovery" 10 r0_blocked_naming_both
lk_log "e: reason: $(st "vol['r0']['reason']")"
# From the daemon's own log (the harness's polling is slow under emulation): the moment it saw
# session $SID2 recover, to the first status it published with a volume blocked.
BLOCKED_MS=$(python3 - "$OUT/daemon.log" "$SID2" <<'PY'
import datetime, re, sys
log, sid = sys.argv[1], sys.argv[2]
ts = lambda s: datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
recovered = None
for line in open(log):
    m = re.match(r"(\S+Z) .*session recovered.*session=" + sid + r"\b", line)
    if m:
        recovered = ts(m.group(1))
    m = re.match(r"(\S+Z) .*status status=.* [1-9]\d* blocked", line)
    if m and recovered is not None:
        print(int((ts(m.group(1)) - recovered) * 1000))
        break
else:
    print(999999)
PY
)
lk_log "e: session recovery seen to r0 published blocked: $BLOCKED_MS ms"
lk_check "e: blocked published within 10 s of the recovery (took $BLOCKED_MS ms)" test "$BLOCKED_MS" -le 10000
lk_check_eq "e: the kernel now shows the new identity on $D2 (re-read)" "$WS" "$(lk_disk_wwid "$D2")"
lk_check_wait "e: $D2 is out of r0's map" 20 out_of_r0_map "$D2"
lk_check "e: r0's map keeps its path through $P1" lk_map_has_paths "${W[0]}" 1
lk_check "e: data written before the swap verifies through the map" \
  cmp <(dd if="/dev/mapper/${W[0]}" bs=1M count=4 iflag=direct status=none) /run/r0.data
sleep 15
lk_check "e: $D2 never added back (15 s later)" out_of_r0_map "$D2"
lk_check "e: no map for the swapped-in WWID" no_map "$WS"
lk_check "e: r1 and r2 unaffected" all_ready r1 r2
# r0 goes, and the mismatched path with it.
{ volume_block r0 0 absent "$P1" "$P2"; volume_block r1 1 present "$P1" "$P2";
  volume_block r2 2 present "$P1" "$P2"; } | write_and_rename
lk_check_wait "e: r0 made absent: map gone" 60 no_map "${W[0]}"

# (b) kill -9 of the daemon during reloads that each add two volumes and remove one (it leaves
# the file).
ROUND=0
for spec in "0.2 2 r1 r3 r4" "0.7 1 r2 r3 r4" "1.5 2 r1 r3 r4"; do
  read -r delay GONE keep add1 add2 <<<"$spec"
  ROUND=$((ROUND + 1))
  { volume_block r0 0 absent "$P1" "$P2"
    for v in "$keep" "$add1" "$add2"; do volume_block "$v" "${v#r}" present "$P1" "$P2"; done
  } | write_and_rename
  sleep "$delay"
  kill9_daemon
  lk_dump_state "b-round$ROUND-killed"
  start_daemon
  lk_check_wait "b$ROUND: killed ${delay}s into a reload, restarted: $keep $add1 $add2 ready" 120 all_ready "$keep" "$add1" "$add2"
  lk_check_wait "b$ROUND: nothing left of r$GONE (no map)" 60 no_map "${W[$GONE]}"
  lk_check_wait "b$ROUND: no disk of r$GONE left" 30 test -z "$(lk_disks_of_wwid "${W[$GONE]}")"
  lk_check "b$ROUND: one session per portal" one_session_per_portal
  lk_check "b$ROUND: r$GONE's WWID unregistered" not_registered "${W[$GONE]}"
done

# (h) state directory read-only: apply refuses before any change.
stop_daemon
mkdir -p /var/lib/lk-ro
mount -t tmpfs -o ro,size=1m tmpfs /var/lib/lk-ro
printf '[[volume]]\nname = "x"\ntarget = "%s"\nportals = ["%s"]\nlun = 0\n' "$OTHER" "$P1" >/etc/lk-other/volumes.toml
NODES_BEFORE=$(node_records)
SESSIONS_BEFORE=$(lk_sessions | tr '\n' ' ')
set +e
T0=$(_lk_now_ms)
"$LK" --config /etc/lk-other/volumes.toml --state-dir /var/lib/lk-ro apply >"$OUT/checks/h-apply.out" 2>&1
RC=$?
set -e
lk_log "h: apply with a read-only state dir exited $RC after $(($(_lk_now_ms) - T0)) ms: $(head -c 300 "$OUT/checks/h-apply.out")"
lk_check_eq "h: apply with a read-only state dir exits 3" 3 "$RC"
lk_check_eq "h: no session made" "$SESSIONS_BEFORE" "$(lk_sessions | tr '\n' ' ')"
lk_check_eq "h: no node record made" "$NODES_BEFORE" "$(node_records)"
umount /var/lib/lk-ro

lk_finish
