#!/usr/bin/env bash
# Daemon scenarios (issue 3, a–h) in one boot: `lunkeeper run` as a child with NOTIFY_SOCKET
# pointed at a listener, the udev rule installed, LIO with one TPG per portal so one path can
# be taken away. Run on the host: tests/vm/vm.sh tests/vm/daemon.sh [RULES-FILE]
. "$(dirname "${BASH_SOURCE[0]}")/guest-lib.sh"

LK=${LUNKEEPER_BIN:?}
CONF_DIR=/etc/lunkeeper
CONF=$CONF_DIR/volumes.toml
RUNDIR=/run/lunkeeper
STATUS=$RUNDIR/status.json
NOTIFY_LOG=$OUT/notify.log
P1=127.0.0.1:3260
P2=127.0.0.2:3260
IQN=iqn.2026-11.test.lunkeeper:daemon
DPID=""

start_daemon() { # CONFIG
  NOTIFY_SOCKET=/run/lk-notify.sock LUNKEEPER_LOG=info "$LK" --config "$1" run >>"$OUT/daemon.log" 2>&1 &
  DPID=$!
  lk_log "daemon started (pid $DPID) with $1"
}
stop_daemon() {
  kill -TERM "$DPID"
  local i
  for i in $(seq 1 300); do kill -0 "$DPID" 2>/dev/null || return 0; sleep 0.1; done
  return 1
}
st() { # PYTHON-EXPR over s (status.json)
  python3 -c "
import json
s = json.load(open('$STATUS'))
vol = {v['name']: v for v in s['volumes']}
print($1)" 2>/dev/null
}
st_is() { [ "$(st "$1")" = "$2" ]; }
notified() { grep -q "$1" "$NOTIFY_LOG"; }
write_and_rename() { # writes stdin to $CONF the way editors do
  cat >"$CONF_DIR/.volumes.toml.tmp" && mv "$CONF_DIR/.volumes.toml.tmp" "$CONF"
}
volume_block() { # NAME LUN PORTALS...
  local name=$1 lun=$2
  shift 2
  local portals
  portals=$(printf '"%s", ' "$@")
  printf '[[volume]]\nname = "%s"\ntarget = "%s"\nportals = [%s]\nlun = %s\n\n' "$name" "$IQN" "${portals%, }" "$lun"
}
link_usable() { # NAME: /dev/lunkeeper/NAME exists and a 4 KiB O_DIRECT read of it works
  [ -b "/dev/lunkeeper/$1" ] && dd if="/dev/lunkeeper/$1" of=/dev/null bs=4k count=1 iflag=direct status=none
}
no_map() { ! lk_dm_of_wwid "$1" >/dev/null 2>&1; }
maps_have() { # WWID N [WWID N ...]
  while (($#)); do lk_map_has_paths "$1" "$2" || return 1; shift 2; done
}
links_usable() {
  local n
  for n in "$@"; do link_usable "$n" || return 1; done
}
error_names_line() { st "s['config']['error']" | grep -q "^$1"; }
sessions_of() { lk_sessions "$IQN" | tr '\n' ' ' | sed 's/ $//'; }
one_session_per_portal() {
  local n1 n2
  n1=0; n2=0
  for s in $(lk_sessions "$IQN"); do
    case "$(lk_session_portal "$s")" in
    "$P1") n1=$((n1 + 1)) ;;
    "$P2") n2=$((n2 + 1)) ;;
    esac
  done
  [ "$n1" = 1 ] && [ "$n2" = 1 ]
}

lk_boot_stack
lk_target d "$IQN" --luns "0 1 2" --portals "$P1 $P2" --tpg-per-portal
W0=$(lk_wwid d 0)
W1=$(lk_wwid d 1)
W2=$(lk_wwid d 2)

install -D -m 0644 "${1:-$LK_REPO/rules/90-lunkeeper.rules}" /etc/udev/rules.d/90-lunkeeper.rules
udevadm control --reload
(python3 "$LK_VM_DIR/notify-listener.py" /run/lk-notify.sock "$NOTIFY_LOG" &)
lk_wait_for 10 test -S /run/lk-notify.sock

mkdir -p "$CONF_DIR"
volume_block base 0 "$P1" "$P2" | write_and_rename
start_daemon "$CONF"
lk_check_wait "start: READY=1 sent" 60 notified 'READY=1'
lk_check_wait "start: base ready in status.json" 60 st_is "vol['base']['state']" ready
lk_check "start: STATUS= line seen" notified 'STATUS=1 ready, 0 degraded'
lk_check_wait "start: /dev/lunkeeper/base usable" 30 link_usable base

# (a) a volume added by write-and-rename.
T0=$(_lk_now_ms)
{ volume_block base 0 "$P1" "$P2"; volume_block added 1 "$P1" "$P2"; } | write_and_rename
lk_check_wait "a: /dev/lunkeeper/added usable after a write-and-rename" 60 link_usable added
lk_log "a: config rename to /dev/lunkeeper/added usable: $(($(_lk_now_ms) - T0)) ms"
lk_check "a: the link points at the map" test "$(readlink -f /dev/lunkeeper/added)" = "$(readlink -f "/dev/mapper/$W1")"
lk_check_wait "a: map has 2 slaves" 30 lk_map_has_paths "$W1" 2

# (c) one portal's TPG disabled: degraded with that path down, I/O keeps working; back by itself.
dd if=/dev/zero of=/run/io-marker bs=1 count=0 status=none
( while [ -e /run/io-marker ]; do dd if="/dev/mapper/$W0" of=/dev/null bs=4k count=16 iflag=direct status=none || echo "io error $(date +%s.%N)" >>"$OUT/io-errors.log"; sleep 0.05; done ) &
T0=$(date +%s.%N)
lk_portal_enable "$IQN" "$P2" 0
lk_check_wait "c: status shows base degraded with $P2 down" 30 st_is "vol['base']['state'] + ' ' + [p['state'] for p in vol['base']['paths'] if p['portal'] == '$P2'][0]" "degraded down"
# When the daemon published it, from its own log (the check's polling would add its own
# latency: each poll starts a python under emulation).
DEGRADED_MS=$(python3 - "$OUT/daemon.log" "$T0" <<'PY'
import datetime, re, sys
log, t0 = sys.argv[1], float(sys.argv[2])
for line in open(log):
    m = re.match(r"(\S+Z) .*status status=\d+ ready, [1-9]\d* degraded", line)
    if m:
        t = datetime.datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()
        if t >= t0:
            print(int((t - t0) * 1000))
            break
else:
    print(999999)
PY
)
lk_log "c: TPG disabled to the daemon publishing degraded: $DEGRADED_MS ms"
lk_check "c: degraded published within 2 s (took $DEGRADED_MS ms)" test "$DEGRADED_MS" -le 2000
lk_check "c: I/O through the map keeps working" dd if="/dev/mapper/$W0" of=/dev/null bs=4k count=64 iflag=direct status=none
lk_portal_enable "$IQN" "$P2" 1
lk_check_wait "c: re-enabled: both paths active again, no command typed" 90 st_is "vol['base']['state'] + ' ' + ' '.join(p['state'] for p in vol['base']['paths'])" "ready active active"
rm -f /run/io-marker
lk_check "c: no I/O error while a path was down" test ! -s "$OUT/io-errors.log"

# (d) a session logged out by hand: lunkeeper logs back in.
SID=$(lk_session_for "$IQN" "$P1")
iscsiadm -m session -r "$SID" --logout >/dev/null
# Timed from the moment the logout returned: the session is gone then.
T0=$(_lk_now_ms)
lk_check_wait "d: lunkeeper logged back in to $P1" 60 lk_session_for "$IQN" "$P1"
lk_check_wait "d: both maps have 2 slaves again" 60 maps_have "$W0" 2 "$W1" 2
lk_log "d: logout by hand to both paths back: $(($(_lk_now_ms) - T0)) ms"

# (e) a volume removed from the file: detached, nothing left.
volume_block base 0 "$P1" "$P2" | write_and_rename
lk_check_wait "e: map of 'added' gone" 60 no_map "$W1"
lk_check_wait "e: no disk of 'added' left" 30 test -z "$(lk_disks_of_wwid "$W1")"
lk_check_wait "e: /dev/lunkeeper/added gone" 30 test ! -e /dev/lunkeeper/added
lk_check "e: its name mapping is gone" test ! -e "$RUNDIR/udev/mpath-$W1"
lk_check "e: its WWID is unregistered" bash -c "! grep -q '^/$W1/\$' /etc/multipath/wwids"
lk_check "e: base still usable" link_usable base

# (f) an invalid file: nothing detached, error in status and STATUS=; fixed: converges.
BEFORE=$(sessions_of)
{ volume_block base 0 "$P1" "$P2"; echo 'bogus = 1'; } | write_and_rename
lk_check_wait "f: status.json says the config was rejected" 30 st_is "s['config']['ok']" False
lk_check "f: the error names file:line" error_names_line "$CONF:7:"
lk_check_wait "f: STATUS= says the config was rejected" 10 notified 'config REJECTED'
lk_check "f: nothing detached" link_usable base
lk_check_eq "f: sessions unchanged" "$BEFORE" "$(sessions_of)"
{ volume_block base 0 "$P1" "$P2"; volume_block fixed 2 "$P1"; } | write_and_rename
lk_check_wait "f: fixed file: converges (config ok, new volume ready)" 60 st_is "str(s['config']['ok']) + ' ' + vol['fixed']['state']" "True ready"

# (g) SIGTERM: everything stays; restart adopts without logging out or in.
BEFORE=$(sessions_of)
lk_check "g: daemon exits on SIGTERM" stop_daemon
lk_check "g: STOPPING=1 sent" notified 'STOPPING=1'
lk_check "g: maps still there after the daemon stopped" maps_have "$W0" 2 "$W2" 1
lk_check_eq "g: sessions still there after the daemon stopped" "$BEFORE" "$(sessions_of)"

# (b) restart on a ConfigMap-style layout (same content): adopted, then a ..data swap applies.
CM=/etc/lk-configmap
mkdir -p "$CM/..2026_11_21_00_00_00.000000001"
cp "$CONF" "$CM/..2026_11_21_00_00_00.000000001/volumes.toml"
ln -s ..2026_11_21_00_00_00.000000001 "$CM/..data"
ln -s ..data/volumes.toml "$CM/volumes.toml"
: >"$NOTIFY_LOG"
LOGINS_BEFORE=$(grep -cE 'step\{action=login\}: .* result=changed' "$OUT/daemon.log" || true)
start_daemon "$CM/volumes.toml"
lk_check_wait "g: restarted daemon is READY" 60 notified 'READY=1'
lk_check_eq "g: session ids unchanged after restart" "$BEFORE" "$(sessions_of)"
lk_check "g: the daemon's logins are in its log (the count below means something)" test "$LOGINS_BEFORE" -ge 2
lk_check_eq "g: no login after restart" "$LOGINS_BEFORE" "$(grep -cE 'step\{action=login\}: .* result=changed' "$OUT/daemon.log" || true)"
NEW=..2026_11_21_00_05_00.000000002
mkdir "$CM/$NEW"
{ volume_block base 0 "$P1" "$P2"; volume_block fixed 2 "$P1"; volume_block cm 1 "$P1" "$P2"; } >"$CM/$NEW/volumes.toml"
ln -s "$NEW" "$CM/..data_tmp"
mv -T "$CM/..data_tmp" "$CM/..data"
rm -rf "$CM/..2026_11_21_00_00_00.000000001"
lk_check_wait "b: ConfigMap swap applied: /dev/lunkeeper/cm usable" 60 link_usable cm

# (h) multipathd restarted, then iscsid restarted: converged again, no duplicate sessions.
pkill -x multipathd
lk_wait_for 30 bash -c '! pgrep -x multipathd >/dev/null'
(setsid multipathd -d -s >"$OUT/logs/multipathd-2.log" 2>&1 &)
lk_wait_for 30 lk_multipathd_ready
lk_check_wait "h: after multipathd restart every volume ready" 90 st_is "' '.join(sorted(v['state'] for v in s['volumes']))" "ready ready ready"
pkill -x iscsid
lk_wait_for 30 bash -c '! pgrep -x iscsid >/dev/null'
(setsid iscsid -f >"$OUT/logs/iscsid-2.log" 2>&1 &)
lk_wait_for 30 lk_iscsid_ready
lk_check_wait "h: after iscsid restart every volume ready" 90 st_is "' '.join(sorted(v['state'] for v in s['volumes']))" "ready ready ready"
lk_check "h: exactly one session per portal (no duplicates)" one_session_per_portal
lk_check "h: links still usable" links_usable base cm fixed

stop_daemon || true
lk_finish
