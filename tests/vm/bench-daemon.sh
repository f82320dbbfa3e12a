#!/usr/bin/env bash
# Daemon benchmark (issue 3, item 8): prints figures, asserts no timing.
#   - time from a config rename to the new device usable (/dev/lunkeeper/<name> readable),
#   - time from one portal's TPG disabled to status.json showing the path down,
#   - time from a session logged out by hand to lunkeeper having logged back in,
#   - idle cost with 8 volumes attached over 60 s: CPU seconds, context switches per second
#     (all threads), RSS and peak RSS.
# Run on the host: tests/vm/vm.sh tests/vm/bench-daemon.sh
. "$(dirname "${BASH_SOURCE[0]}")/guest-lib.sh"

LK=${LUNKEEPER_BIN:?}
CONF=/etc/lunkeeper/volumes.toml
STATUS=/run/lunkeeper/status.json
P1=127.0.0.1:3260
P2=127.0.0.2:3260
IQN=iqn.2026-11.test.lunkeeper:bench
BENCH=$OUT/bench.txt
IDLE_SECS=${IDLE_SECS:-60}

figure() { echo "$*" | tee -a "$BENCH"; }
volume_block() {
  printf '[[volume]]\nname = "%s"\ntarget = "%s"\nportals = ["%s", "%s"]\nlun = %s\n\n' "$1" "$IQN" "$P1" "$P2" "$2"
}
write_and_rename() { cat >"$CONF.tmp" && mv "$CONF.tmp" "$CONF"; }
usable() { [ -b "/dev/lunkeeper/$1" ] && dd if="/dev/lunkeeper/$1" of=/dev/null bs=4k count=1 iflag=direct status=none; }
all_ready() {
  python3 -c "
import json, sys
s = json.load(open('$STATUS'))
sys.exit(0 if len(s['volumes']) == $1 and all(v['state'] == 'ready' for v in s['volumes']) else 1)" 2>/dev/null
}
path_down() {
  python3 -c "
import json, sys
s = json.load(open('$STATUS'))
sys.exit(0 if any(p['portal'] == '$P2' and p['state'] == 'down' for v in s['volumes'] for p in v['paths']) else 1)" 2>/dev/null
}
# CPU ticks of the whole process (exited threads included, as /proc/PID/stat counts them).
cpu_ticks() {
  local f
  read -r -a f <"/proc/$1/stat"
  echo $((f[13] + f[14]))
}
# "tid switches" for each live thread (voluntary + involuntary context switches).
thread_switches() {
  local t v n
  for t in /proc/"$1"/task/*; do
    v=$(awk '/^voluntary_ctxt_switches/ {print $2}' "$t/status" 2>/dev/null) || continue
    n=$(awk '/^nonvoluntary_ctxt_switches/ {print $2}' "$t/status" 2>/dev/null) || continue
    [ -n "$v" ] && [ -n "$n" ] && echo "${t##*/} $((v + n))"
  done
}

lk_boot_stack
lk_target b "$IQN" --luns "0 1 2 3 4 5 6 7 8" --portals "$P1 $P2" --tpg-per-portal >/dev/null
install -D -m 0644 "$LK_REPO/rules/90-lunkeeper.rules" /etc/udev/rules.d/90-lunkeeper.rules
udevadm control --reload
mkdir -p /etc/lunkeeper
for l in 0 1 2 3 4 5 6 7; do volume_block "v$l" "$l"; done | write_and_rename
T0=$(_lk_now_ms)
LUNKEEPER_LOG=info "$LK" --config "$CONF" run >>"$OUT/daemon.log" 2>&1 &
DPID=$!
lk_check_wait "8 volumes ready under the daemon" 300 all_ready 8
figure "start to 8 volumes ready (2 sessions, 16 paths, 8 maps): $(($(_lk_now_ms) - T0)) ms"

# Config rename to device usable.
T0=$(_lk_now_ms)
{ for l in 0 1 2 3 4 5 6 7 8; do volume_block "v$l" "$l"; done; } | write_and_rename
lk_check_wait "v8 usable after a config rename" 120 usable v8
figure "config rename to /dev/lunkeeper/v8 usable: $(($(_lk_now_ms) - T0)) ms"
lk_wait_for 120 all_ready 9

# Path failure to status.
T0=$(_lk_now_ms)
lk_portal_enable "$IQN" "$P2" 0 >/dev/null
lk_check_wait "status shows $P2 down" 60 path_down
figure "TPG of $P2 disabled to status.json showing the path down: $(($(_lk_now_ms) - T0)) ms"
lk_portal_enable "$IQN" "$P2" 1 >/dev/null
lk_check_wait "all ready again after the TPG came back" 120 all_ready 9

# Session loss to re-login.
SID=$(lk_session_for "$IQN" "$P1")
iscsiadm -m session -r "$SID" --logout >/dev/null
# The session is gone once the logout returns (it waits for the SCSI devices to go).
T0=$(_lk_now_ms)
lk_check_wait "lunkeeper logged back in" 120 lk_session_for "$IQN" "$P1"
figure "session logged out by hand to a new session: $(($(_lk_now_ms) - T0)) ms"
lk_check_wait "all ready after the re-login" 120 all_ready 9

# Idle cost: drop back to 8 volumes, let everything settle, then sample.
for l in 0 1 2 3 4 5 6 7; do volume_block "v$l" "$l"; done | write_and_rename
lk_wait_for 120 all_ready 8
lk_wait_for 30 udevadm settle
# Warm-up, not synchronisation: the last follow-up looks pass and tokio's idle blocking
# threads (10 s keep-alive) exit, so the window sees the daemon's steady state.
sleep 15
TK0=$(cpu_ticks "$DPID")
thread_switches "$DPID" >"$OUT/switches-0"
sleep "$IDLE_SECS" # the measurement window itself
TK1=$(cpu_ticks "$DPID")
thread_switches "$DPID" >"$OUT/switches-1"
# Switches of threads alive at both ends (a thread born or gone in between is listed apart).
SW=$(awk 'NR == FNR {a[$1] = $2; next} ($1 in a) {s += $2 - a[$1]} END {print s + 0}' "$OUT/switches-0" "$OUT/switches-1")
CHURN=$(awk 'NR == FNR {a[$1] = 1; next} !($1 in a) {n++} END {print n + 0}' "$OUT/switches-0" "$OUT/switches-1")
HZ=$(getconf CLK_TCK)
RSS=$(awk '/^VmRSS/ {print $2}' /proc/"$DPID"/status)
HWM=$(awk '/^VmHWM/ {print $2}' /proc/"$DPID"/status)
THREADS=$(ls /proc/"$DPID"/task | wc -l)
figure "idle ${IDLE_SECS} s with 8 volumes: CPU $(python3 -c "print(f'{($TK1 - $TK0) / $HZ:.3f}')") s, context switches $SW ($(python3 -c "print(f'{$SW / $IDLE_SECS:.3f}')")/s), threads $THREADS (new during the window: $CHURN), RSS ${RSS} KiB, peak RSS ${HWM} KiB ($(basename "$(dirname "$(dirname "$LK")")")/$(basename "$(dirname "$LK")") build)"
lk_check "the daemon is still running after the idle window" kill -0 "$DPID"
kill -TERM "$DPID"
lk_finish
