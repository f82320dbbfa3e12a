#!/usr/bin/env bash
# Fault scenarios (issue 8, Deliver 8; rows a, c, d, f, g, j, k) in one boot: lunkeeper against
# LIO, open-iscsi, multipathd and udev while things break. Each row asserts kernel facts
# afterwards (sysfs sessions, SCSI disks, dm maps and slaves, node records, /etc/multipath/wwids,
# name mappings) and, where a device is attached, runs a checksummed writer/reader (lk_io_*)
# through it across the fault: no acknowledged write may be lost or corrupt.
#
# Run on the host: tests/vm/vm.sh tests/vm/faults.sh [ROW...]   (default: all rows, a c j g d k f)
. "$(dirname "${BASH_SOURCE[0]}")/guest-lib.sh"

LK=${LUNKEEPER_BIN:?}
CONF_DIR=/etc/lunkeeper
CONF=$CONF_DIR/volumes.toml
SECRETS=$CONF_DIR/secrets
RUNDIR=/run/lunkeeper
STATUS=$RUNDIR/status.json
OWNED=/var/lib/lunkeeper/owned.json
NOTIFY_LOG=$OUT/notify.log
P1=127.0.0.1:3260
P2=127.0.0.2:3260
IQN_PREFIX=iqn.2026-11.test.lunkeeper
N=0
ROW=none
ROWNUM=0
DPID=""
# What lunkeeper may never do while a volume is meant to stay: the log names of those actions.
DESTRUCTIVE='step\{action=(flush_map|delete_device|logout|del_path|unregister_wwid|unname_device|delete_node|disable_queueing|disown_volume)\}'
# A step that finished (the engine logs each at info with its result; bookkeeping and steps that
# found nothing to do are logged at debug).
STEP_DONE='step\{action=[a-z_]+\}: .* result=(changed|already)'

# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

# lk_apply [ARGS...]: lunkeeper apply (log level $APPLY_LEVEL, default info); output in
# $OUT/apply-N.log; sets APPLY_RC, APPLY_LOG and APPLY_MS.
lk_apply() {
  N=$((N + 1))
  APPLY_LOG=$OUT/apply-$ROW-$N.log
  APPLY_RC=0
  local t0
  t0=$(_lk_now_ms)
  LUNKEEPER_LOG=${APPLY_LEVEL:-info} timeout 300 "$LK" --config "$CONF" apply --timeout "${APPLY_TIMEOUT:-240}" "$@" >"$APPLY_LOG" 2>&1 || APPLY_RC=$?
  APPLY_MS=$(($(_lk_now_ms) - t0))
  lk_log "apply #$N exit $APPLY_RC in $APPLY_MS ms: $(grep -v ' INFO \| DEBUG \| TRACE ' "$APPLY_LOG" | tail -n 8 | tr '\n' '|')"
}

# apply_killed_after K: `apply` in the background at debug level, killed with SIGKILL as soon as
# its log shows K finished steps ("done action=..."). Sets KILLED (1 if the kill landed before
# apply exited), KILLED_AT (steps done when killed) and KILL_LOG.
apply_killed_after() {
  local k=$1 pid rc=0 done_n=0
  N=$((N + 1))
  KILL_LOG=$OUT/apply-$ROW-$N-kill.log
  LUNKEEPER_LOG=debug "$LK" --config "$CONF" apply --timeout 240 >"$KILL_LOG" 2>&1 &
  pid=$!
  KILLED=0
  while kill -0 "$pid" 2>/dev/null; do
    done_n=$(grep -cE "$STEP_DONE" "$KILL_LOG" || true)
    if ((done_n >= k)); then
      kill -9 "$pid" 2>/dev/null && KILLED=1
      break
    fi
    sleep 0.02
  done
  wait "$pid" 2>/dev/null || rc=$?
  ((rc == 137)) || KILLED=0
  KILLED_AT=$(grep -cE "$STEP_DONE" "$KILL_LOG" || true)
  lk_log "apply #$N: kill point $k: $([[ $KILLED == 1 ]] && echo "killed -9 after $KILLED_AT steps; last: $(grep -E "$STEP_DONE" "$KILL_LOG" | tail -n 1 | sed 's/.*step{action=//; s/}.*//')" || echo "exited $rc by itself after $KILLED_AT steps")"
}

# steps_in LOG: finished steps in an apply log.
steps_in() { grep -cE "$STEP_DONE" "$1" || true; }

# no_destructive LOG...: none of the logs shows a finished or failed destructive action.
no_destructive() {
  local hits
  hits=$(grep -hE "$DESTRUCTIVE" "$@" || true)
  if [[ -n $hits ]]; then
    echo "destructive actions found:"
    echo "$hits" | head -n 20
    return 1
  fi
  echo "no destructive action in $(cat "$@" | wc -l) log lines of $#  file(s)"
}

start_daemon() { # [LEVEL]: lunkeeper run on $CONF, log in $OUT/daemon.log, watchdog every 1 s
  : >"$NOTIFY_LOG"
  rm -f "$STATUS" # a previous daemon's file must not pass for this one's
  echo "---- daemon start $(date +%s.%N)" >>"$OUT/daemon.log"
  # WATCHDOG_PID must name the daemon itself (sd_notify ignores WATCHDOG_USEC otherwise): the
  # shell's pid, which exec hands to lunkeeper.
  NOTIFY_SOCKET=/run/lk-notify.sock WATCHDOG_USEC=2000000 LUNKEEPER_LOG=${1:-info} \
    bash -c 'export WATCHDOG_PID=$$; exec "$0" "$@"' "$LK" --config "$CONF" run >>"$OUT/daemon.log" 2>&1 &
  DPID=$!
  echo "$DPID" >"$LK_STATE/daemon.pid"
  lk_log "daemon started (pid $DPID)"
}
stop_daemon() {
  [[ -n $DPID ]] || return 0
  kill -TERM "$DPID" 2>/dev/null || true
  lk_wait_for 30 bash -c "! kill -0 $DPID" || kill -9 "$DPID" 2>/dev/null || true
  wait "$DPID" 2>/dev/null || true
  lk_log "daemon $DPID stopped"
  DPID=""
  rm -f "$LK_STATE/daemon.pid"
}
# st PYTHON-EXPR: evaluate over s (status.json) and vol (volumes by name).
st() {
  python3 -c "
import json
s = json.load(open('$STATUS'))
vol = {v['name']: v for v in s['volumes']}
print($1)" 2>/dev/null
}
st_is() { [ "$(st "$1")" = "$2" ]; }
not_ready() { local v; v=$(st "vol['$1']['state']"); [[ -n $v && $v != ready ]]; }
daemon_ready() { # NAME...: status.json shows each volume ready with every path active
  local n
  for n in "$@"; do
    st_is "vol['$n']['state'] + ' ' + ','.join(sorted(set(p['state'] for p in vol['$n']['paths'])))" "ready active" || return 1
  done
}
# status_of NAME: the volume's state from `lunkeeper status --json` (no daemon running).
status_of() {
  "$LK" --config "$CONF" status --json | python3 -c "
import json, sys
print([v for v in json.load(sys.stdin)['volumes'] if v['name'] == '$1'][0]['state'])"
}

# vol NAME IQN LUN STATE PORTAL... : one [[volume]] block.
vol() {
  local name=$1 iqn=$2 lun=$3 state=$4
  shift 4
  local portals
  portals=$(printf '"%s", ' "$@")
  printf '[[volume]]\nname = "%s"\ntarget = "%s"\nportals = [%s]\nlun = %s\nstate = "%s"\n' \
    "$name" "$iqn" "${portals%, }" "$lun" "$state"
}
chap() { # USER FILE [USER_IN FILE_IN]
  printf '[volume.chap]\nusername = "%s"\npassword_file = "%s"\n' "$1" "$2"
  if (($# > 2)); then printf 'username_in = "%s"\npassword_in_file = "%s"\n' "$3" "$4"; fi
}
# write_conf: stdin becomes the file, after a [defaults] table (replacement_timeout 5 s, login
# timeout 10 s unless LOGIN_TIMEOUT is set), written and renamed the way editors do.
write_conf() {
  mkdir -p "$CONF_DIR"
  {
    printf '[defaults]\nreplacement_timeout = 5\nlogin_timeout = %s\n\n' "${LOGIN_TIMEOUT:-10}"
    cat
  } >"$CONF_DIR/.volumes.toml.tmp"
  mv "$CONF_DIR/.volumes.toml.tmp" "$CONF"
}

# Kernel facts ---------------------------------------------------------------------------------

# volume_attached IQN WWID PORTAL...: exactly one LOGGED_IN session per portal (none elsewhere),
# a map with one slave per portal, the WWID registered, the name mapping present, one node
# record per portal. Prints what it found.
volume_attached() {
  local iqn=$1 w=$2
  shift 2
  volumes_attached "$iqn" "$w" "$(
    IFS=,
    echo "$*"
  )"
}

# volumes_attached IQN WWID PORTAL,PORTAL [IQN WWID PORTALS ...]: volume_attached for several
# volumes in one process (each shell command costs a lot in an emulated guest).
volumes_attached() {
  python3 - "$RUNDIR" "$@" <<'PY'
import glob, os, sys
rundir, args = sys.argv[1], sys.argv[2:]
def rd(p):
    with open(p) as f:
        return f.read().strip()
sessions = []  # (target, "ip:port", state)
for s in glob.glob("/sys/class/iscsi_session/session*"):
    sid = s.rsplit("session", 1)[1]
    conns = glob.glob(f"/sys/class/iscsi_connection/connection{sid}:*")
    portal = f"{rd(conns[0] + '/persistent_address')}:{rd(conns[0] + '/persistent_port')}" if conns else "?"
    sessions.append((rd(s + "/targetname"), portal, rd(s + "/state")))
maps = {}
for d in glob.glob("/sys/block/dm-*"):
    maps[rd(d + "/dm/uuid")] = (os.path.basename(d), sorted(os.listdir(d + "/slaves")))
wwids = set(l.strip() for l in open("/etc/multipath/wwids") if not l.startswith("#"))
bad = 0
for i in range(0, len(args), 3):
    iqn, w, portals = args[i], args[i + 1], args[i + 2].split(",")
    got = sorted(f"{p}/{st}" for t, p, st in sessions if t == iqn)
    want = sorted(f"{p}/LOGGED_IN" for p in portals)
    dm, slaves = maps.get("mpath-" + w, (None, []))
    recs = len([f for f in glob.glob(f"/etc/iscsi/nodes/{iqn}/**", recursive=True) if os.path.isfile(f)])
    mapping = os.path.exists(f"{rundir}/udev/mpath-{w}")
    print(f"{iqn}: sessions {got}, map {dm} slaves {slaves}, registered {f'/{w}/' in wwids}, mapping {mapping}, node records {recs}")
    ok = got == want and dm and os.path.exists(f"/dev/mapper/{w}") and len(slaves) == len(portals) \
        and f"/{w}/" in wwids and mapping and recs == len(portals)
    if not ok:
        print(f"  want sessions {want}, a map with {len(portals)} slaves, the WWID registered, the mapping, {len(portals)} records")
        bad = 1
sys.exit(bad)
PY
}

# nothing_of_lunkeeper_left KEEP_IQN KEEP_DISK: the only session, SCSI disk and node record left
# are the foreign ones (KEEP_*, may be empty); no multipath map, no WWID entry, no name mapping,
# no ownership record.
nothing_of_lunkeeper_left() {
  local keep_iqn=$1 keep_disk=$2 bad=0 s x
  local sessions=() disks=() maps=() records=() wwids mappings owned
  for s in $(lk_sessions); do sessions+=("$(cat "/sys/class/iscsi_session/session$s/targetname")"); done
  for x in /sys/block/sd*; do disks+=("${x##*/}"); done
  for x in /sys/block/dm-*; do [[ "$(cat "$x/dm/uuid")" == mpath-* ]] && maps+=("$(cat "$x/dm/name")"); done
  for x in /etc/iscsi/nodes/*; do records+=("${x##*/}"); done
  wwids=$(grep -v '^#' /etc/multipath/wwids 2>/dev/null | tr '\n' ' ' || true)
  mappings=$(ls "$RUNDIR/udev" 2>/dev/null | tr '\n' ' ' || true)
  owned=$(python3 -c "
import json, sys
try:
    o = json.load(open('$OWNED'))
except FileNotFoundError:
    o = {}
print(' '.join(k for k, v in o.items() if k != 'version' and v))")
  echo "sessions [${sessions[*]}] disks [${disks[*]}] maps [${maps[*]}] node records [${records[*]}] wwids [$wwids] mappings [$mappings] owned.json non-empty keys [$owned]"
  [[ "${sessions[*]}" == "$keep_iqn" ]] || bad=1
  [[ "${disks[*]}" == "$keep_disk" ]] || bad=1
  [[ "${records[*]}" == "$keep_iqn" ]] || bad=1
  [[ ${#maps[@]} == 0 && -z $wwids && -z $mappings && -z $owned ]] || bad=1
  return "$bad"
}

# io_clean NAME: the writer saw no I/O error and every acknowledged write reads back intact.
io_clean() {
  lk_io_verify "$1" || return 1
  local e
  e=$(lk_io_errors "$1")
  echo "I/O errors: $e"
  [[ $e == 0 ]]
}

# io_past NAME N: the writer NAME has more than N acknowledged writes (for lk_wait_for).
io_past() { (($(lk_io_acked "$1") > $2)); }

# no_secret_in PATTERN_FILE FILE...: every file exists and none holds a line of PATTERN_FILE
# (fixed strings; a file, so that the secrets never appear in this script's own argv).
no_secret_in() {
  local patterns=$1 f bad=0
  shift
  for f in "$@"; do
    if [[ ! -e $f ]]; then
      echo "missing: $f"
      bad=1
    elif grep -qFf "$patterns" "$f"; then
      echo "secret found in $f"
      bad=1
    fi
  done
  echo "searched $# files, $(cat "$@" 2>/dev/null | wc -l) lines"
  return "$bad"
}

# sids_of IQN...: "portal=sid" of every session of these targets (to compare before/after).
sids_of() {
  local iqn s
  for iqn in "$@"; do
    for s in $(lk_sessions "$iqn"); do echo "$iqn $(lk_session_portal "$s")=$s"; done
  done | sort | tr '\n' ' '
}

# Row bookkeeping ------------------------------------------------------------------------------

# run_row NAME FUNCTION: run one row in a subshell so that a crash in it is recorded and the
# other rows still run; then put the host back to a clean state if the row left things behind.
run_row() {
  local name=$1 fn=$2 rc=0 t0
  t0=$(_lk_now_ms)
  ROW=$name
  ROWNUM=$((ROWNUM + 1))
  _LK_NCHECK=$((ROWNUM * 1000)) # check logs of different rows (subshells) must not collide
  lk_log "==== row $name: start"
  set +e
  (
    set -e
    "$fn"
  )
  rc=$?
  set -e
  local secs=$((($(_lk_now_ms) - t0) / 1000))
  lk_log "==== row $name: finished (exit $rc) in ${secs} s"
  echo "row $name: ${secs} s, exit $rc" >>"$OUT/row-times.txt"
  if ((rc != 0)); then
    _lk_record FAIL "row $name ran to its end" "the row stopped early (exit $rc); see guest.log"
  fi
  reset_host "$name"
}

# reset_host ROW: stop what a row may have left running (daemon, writers, rules, disabled TPGs)
# and, if anything is still attached, clean it up by hand so the next row starts from nothing.
reset_host() {
  local f
  if [[ -s $LK_STATE/daemon.pid ]]; then
    kill -9 "$(cat "$LK_STATE/daemon.pid")" 2>/dev/null || true
    rm -f "$LK_STATE/daemon.pid"
  fi
  for f in "$LK_STATE"/io/*/pid; do
    touch "${f%/pid}/stop"
  done
  nft flush ruleset 2>/dev/null || true
  for f in "$LK_CFG"/iscsi/*/tpgt_*/enable; do
    [[ "$(cat "$f")" == 1 ]] || echo 1 >"$f" || true
  done
  if ! _lk_nothing_left || [[ -n "$(ls /etc/iscsi/nodes)" ]]; then
    lk_log "row $1 left things attached: cleaning up by hand"
    lk_dump_state "after-row-$1" || true
    lk_cleanup_all || true
    rm -f "$OWNED" "$RUNDIR"/udev/*
  fi
}

# ---------------------------------------------------------------------------------------------
# Row a: apply killed -9 at >= 10 points of an attach of 4 volumes x 2 portals and >= 5 points
# of their detach; each time the next apply converges; a foreign session stays untouched.
# ---------------------------------------------------------------------------------------------

row_a_kill_apply() {
  local i iqn
  local -a iqns=() wwids=()
  for i in 0 1 2 3; do
    iqn=$IQN_PREFIX:kill$i
    if ((i == 3)); then
      lk_target "kill$i" "$iqn" --portals "$P1 $P2" --chap kuser kill-chap-secret-3
    else
      lk_target "kill$i" "$iqn" --portals "$P1 $P2"
    fi
    iqns+=("$iqn")
    wwids+=("$(lk_wwid "kill$i" 0)")
  done
  echo kill-chap-secret-3 >"$SECRETS/kuser"
  chmod 600 "$SECRETS/kuser"
  conf_a() { # STATE
    for i in 0 1 2 3; do
      vol "k$i" "${iqns[$i]}" 0 "$1" "$P1" "$P2"
      ((i == 3)) && chap kuser "$SECRETS/kuser"
      echo
    done | write_conf
  }
  all_attached() {
    echo "SCSI disks: $(ls /sys/block | grep -c '^sd')"
    volumes_attached "${iqns[0]}" "${wwids[0]}" "$P1,$P2" "${iqns[1]}" "${wwids[1]}" "$P1,$P2" \
      "${iqns[2]}" "${wwids[2]}" "$P1,$P2" "${iqns[3]}" "${wwids[3]}" "$P1,$P2"
  }

  # The foreign session: another target, logged in by hand before lunkeeper runs; a checksummed
  # writer runs on its disk for the whole row.
  local fiqn=$IQN_PREFIX:foreign fsid fdisk frec_sum
  lk_target foreign "$fiqn" --portals "$P1"
  iscsiadm -m node -o new -T "$fiqn" -p "$P1" >/dev/null
  iscsiadm -m node -T "$fiqn" -p "$P1" --login >/dev/null
  fsid=$(lk_session_for "$fiqn" "$P1")
  lk_wait_for 30 test -n "$(lk_disks_of_wwid "$(lk_wwid foreign 0)")"
  udevadm settle --timeout=30 || true
  fdisk=$(lk_disks_of_wwid "$(lk_wwid foreign 0)")
  frec_sum=$(find "/etc/iscsi/nodes/$fiqn" -type f -exec cat {} + | sha256sum | cut -c1-16)
  lk_log "a: foreign session $fsid, disk $fdisk, node record sum $frec_sum"
  lk_io_start foreign "/dev/$fdisk"
  foreign_untouched() {
    local sum
    sum=$(find "/etc/iscsi/nodes/$fiqn" -type f -exec cat {} + 2>/dev/null | sha256sum | cut -c1-16)
    echo "foreign: session $(lk_session_for "$fiqn" "$P1" || echo none) ($(lk_session_state "$fsid" 2>/dev/null || echo gone)), disk $(lk_disks_of_wwid "$(lk_wwid foreign 0)"), record sum $sum, writes acked $(lk_io_acked foreign), I/O errors $(lk_io_errors foreign)"
    [[ "$(lk_session_for "$fiqn" "$P1")" == "$fsid" && "$(lk_session_state "$fsid")" == LOGGED_IN ]] &&
      [[ "$(lk_disks_of_wwid "$(lk_wwid foreign 0)")" == "$fdisk" && "$sum" == "$frec_sum" ]] &&
      [[ "$(lk_io_errors foreign)" == 0 ]] && ! grep -q "$fiqn" "$OWNED" 2>/dev/null
  }

  # Calibration: an uninterrupted attach and detach, to know how many steps each has.
  conf_a present
  APPLY_LEVEL=debug lk_apply
  local attach_steps detach_steps
  attach_steps=$(steps_in "$APPLY_LOG")
  lk_check_eq "a: uninterrupted attach of 4 volumes x 2 portals exits 0 ($attach_steps steps, $APPLY_MS ms)" 0 "$APPLY_RC"
  lk_check "a: after the uninterrupted attach: 8 sessions, 4 maps of 2 slaves, WWIDs, mappings, records" all_attached
  conf_a absent
  APPLY_LEVEL=debug lk_apply
  detach_steps=$(steps_in "$APPLY_LOG")
  lk_check_eq "a: uninterrupted detach exits 0 ($detach_steps steps, $APPLY_MS ms)" 0 "$APPLY_RC"
  lk_check "a: after the uninterrupted detach nothing of lunkeeper's is left" nothing_of_lunkeeper_left "$fiqn" "$fdisk"
  ((attach_steps >= 11 && detach_steps >= 6)) || lk_die "too few steps to spread kill points: attach $attach_steps, detach $detach_steps"

  # Ten attach kills spread over the steps (k = i * steps / 11), each followed by a completing
  # apply; then a detach kill and a completing apply.
  local attach_kills=0 detach_kills=0 k points_a="" points_d=""
  for i in $(seq 1 10); do
    k=$((i * attach_steps / 11))
    ((k >= 1)) || k=1
    conf_a present
    apply_killed_after "$k"
    if ((KILLED)); then attach_kills=$((attach_kills + 1)); points_a+="$KILLED_AT "; fi
    APPLY_LEVEL=debug lk_apply
    lk_check_eq "a$i: apply after a kill -9 at attach step $k/$attach_steps converges (exit 0, $APPLY_MS ms)" 0 "$APPLY_RC"
    lk_check "a$i: attached: one session per portal, 4 maps of 2 slaves, WWIDs, mappings, records" all_attached

    conf_a absent
    # A detach kill in every cycle (k = i * steps / 11): the release build detaches fast
    # enough that a late kill point can miss; at least 5 must land.
    k=$((i * detach_steps / 11))
    ((k >= 1)) || k=1
    apply_killed_after "$k"
    if ((KILLED)); then detach_kills=$((detach_kills + 1)); points_d+="$KILLED_AT "; fi
    APPLY_LEVEL=debug lk_apply
    lk_check_eq "a$i: apply after a kill -9 at detach step $k/$detach_steps converges (exit 0, $APPLY_MS ms)" 0 "$APPLY_RC"
    lk_check "a$i: detached: nothing of lunkeeper's left" nothing_of_lunkeeper_left "$fiqn" "$fdisk"
    lk_check "a$i: foreign session, disk and node record untouched" foreign_untouched
  done
  lk_log "a: attach kills after steps [$points_a], detach kills after steps [$points_d]"
  lk_check "a: >= 10 kills landed during attaches (got $attach_kills, after steps: $points_a)" test "$attach_kills" -ge 10
  lk_check "a: >= 5 kills landed during detaches (got $detach_kills, after steps: $points_d)" test "$detach_kills" -ge 5
  lk_io_stop foreign
  lk_check "a: foreign disk's writer: 0 I/O errors, 0 acknowledged writes lost or corrupt" lk_io_verify foreign
  lk_check "a: foreign session still logged in, same id, record unchanged" foreign_untouched
  iscsiadm -m node -T "$fiqn" -p "$P1" --logout >/dev/null
  iscsiadm -m node -T "$fiqn" -p "$P1" -o delete >/dev/null
}

# ---------------------------------------------------------------------------------------------
# Row c: every portal of a volume down for 3 x replacement_timeout under writes, twice: once
# with `apply` run during the outage, once with the daemon running. Nothing flushed, logged out
# or deleted; afterwards ready (after one apply / with no command typed); the data verifies.
# ---------------------------------------------------------------------------------------------

row_c_all_portals_down() {
  local iqn=$IQN_PREFIX:outage w before after t0
  lk_target outage "$iqn" --portals "$P1 $P2" --tpg-per-portal
  w=$(lk_wwid outage 0)
  vol out "$iqn" 0 present "$P1" "$P2" | write_conf
  lk_apply
  lk_check_eq "c: volume attached (exit 0, $APPLY_MS ms)" 0 "$APPLY_RC"
  lk_io_start outage "/dev/mapper/$w"
  lk_wait_for 60 io_past outage 0
  facts() { # the kernel facts that must not change during an outage
    echo "sessions $(sids_of "$iqn")"
    echo "map $(lk_dm_of_wwid "$w") slaves $(lk_dm_slaves "$(lk_dm_of_wwid "$w")")"
    echo "records $(find "/etc/iscsi/nodes/$iqn" -type f | sort | tr '\n' ' ')"
    echo "wwids $(grep -c "^/$w/\$" /etc/multipath/wwids) mapping $(ls "$RUNDIR/udev/mpath-$w")"
    echo "queueing $(dmsetup table "$w" | grep -o '[0-9] queue_if_no_path' || echo off)"
  }
  before=$(facts)
  lk_log "c: before: $(tr '\n' '|' <<<"$before")"

  # Outage 1: both TPGs disabled for 15 s; apply runs at the start and after replacement_timeout.
  local acked0 apply_logs=()
  t0=$(_lk_now_ms)
  lk_tpg_enable "$iqn" 0
  APPLY_TIMEOUT=6 lk_apply
  apply_logs+=("$APPLY_LOG")
  lk_log "c: apply at the start of the outage: exit $APPLY_RC"
  while (($(_lk_now_ms) - t0 < 7000)); do sleep 0.2; done
  APPLY_TIMEOUT=6 lk_apply
  apply_logs+=("$APPLY_LOG")
  lk_log "c: apply after replacement_timeout: exit $APPLY_RC, session states $(for s in $(lk_sessions "$iqn"); do lk_session_state "$s"; done | tr '\n' ' ')"
  while (($(_lk_now_ms) - t0 < 15000)); do sleep 0.2; done
  after=$(facts)
  lk_check "c1: during a 15 s outage 2 applies took no destructive action" no_destructive "${apply_logs[@]}"
  lk_check_eq "c1: after 15 s with every portal down, sessions, map, slaves, records, WWID, mapping and queueing unchanged" "$before" "$after"
  acked0=$(lk_io_acked outage)
  lk_tpg_enable "$iqn" 1
  lk_log "c: outage 1 over after $(($(_lk_now_ms) - t0)) ms; writes acked so far $acked0"
  lk_apply
  lk_check_eq "c1: one apply after the portals return: exit 0 ($APPLY_MS ms)" 0 "$APPLY_RC"
  lk_check "c1: volume fully attached again" volume_attached "$iqn" "$w" "$P1" "$P2"
  lk_check_wait "c1: writes go through again (acked > $acked0 + 20)" 60 io_past outage $((acked0 + 20))

  # Outage 2: the daemon runs; no command typed.
  start_daemon
  lk_check_wait "c2: daemon shows the volume ready" 60 daemon_ready out
  before=$(facts)
  local mark
  mark=$(wc -l <"$OUT/daemon.log")
  t0=$(_lk_now_ms)
  lk_tpg_enable "$iqn" 0
  lk_check_wait "c2: the daemon sees the volume lose its paths" 20 not_ready out
  lk_log "c2: status during the outage: $(st "vol['out']['state'] + ' ' + str([p['state'] for p in vol['out']['paths']])")"
  while (($(_lk_now_ms) - t0 < 15000)); do sleep 0.2; done
  after=$(facts)
  tail -n +"$((mark + 1))" "$OUT/daemon.log" >"$OUT/c2-daemon-outage.log"
  lk_check "c2: during a 15 s outage the daemon took no destructive action" no_destructive "$OUT/c2-daemon-outage.log"
  lk_check_eq "c2: after 15 s with every portal down, everything unchanged" "$before" "$after"
  acked0=$(lk_io_acked outage)
  t0=$(_lk_now_ms)
  lk_tpg_enable "$iqn" 1
  lk_check_wait "c2: ready again with no command typed" 90 daemon_ready out
  lk_log "c2: portals back to status ready: $(($(_lk_now_ms) - t0)) ms"
  lk_check "c2: volume fully attached again" volume_attached "$iqn" "$w" "$P1" "$P2"
  lk_check_wait "c2: writes go through again (acked > $acked0 + 20)" 60 io_past outage $((acked0 + 20))
  stop_daemon
  lk_io_stop outage
  lk_check "c: writer across both outages: 0 I/O errors, 0 acknowledged writes lost or corrupt" io_clean outage
  vol out "$iqn" 0 absent "$P1" "$P2" | write_conf
  lk_apply
  lk_check "c: detached, nothing left (exit $APPLY_RC)" nothing_of_lunkeeper_left "" ""
}

# ---------------------------------------------------------------------------------------------
# Row j: portals given as host names (/etc/hosts) that stop resolving: paths kept by apply and
# by the daemon; resolving again -> converged.
# ---------------------------------------------------------------------------------------------

row_j_names_stop_resolving() {
  local iqn=$IQN_PREFIX:names w before
  lk_target names "$iqn" --portals "$P1 $P2"
  w=$(lk_wwid names 0)
  # No DNS server in the VM: a refused query fails at once instead of timing out.
  rm -f /etc/resolv.conf
  printf 'nameserver 127.0.0.1\noptions timeout:1 attempts:1\n' >/etc/resolv.conf
  cp /etc/hosts /run/hosts.orig
  printf '127.0.0.1 san-a.lunkeeper.test\n127.0.0.2 san-b.lunkeeper.test\n' >>/etc/hosts
  vol named "$iqn" 0 present san-a.lunkeeper.test:3260 san-b.lunkeeper.test:3260 | write_conf
  lk_apply
  lk_check_eq "j: volume with host-name portals attached (exit 0, $APPLY_MS ms)" 0 "$APPLY_RC"
  lk_check "j: attached through both names" volume_attached "$iqn" "$w" "$P1" "$P2"
  lk_io_start names "/dev/mapper/$w"
  lk_wait_for 60 io_past names 0
  before=$(sids_of "$iqn")

  cp /run/hosts.orig /etc/hosts
  lk_check "j: the names no longer resolve" bash -c '! getent hosts san-a.lunkeeper.test && ! getent hosts san-b.lunkeeper.test'
  APPLY_TIMEOUT=15 lk_apply
  lk_log "j: apply without the names: exit $APPLY_RC"
  lk_check "j: apply without the names took no destructive action" no_destructive "$APPLY_LOG"
  lk_check_eq "j: sessions unchanged after apply" "$before" "$(sids_of "$iqn")"
  lk_check "j: still attached after apply (map, slaves, WWID, mapping, records)" volume_attached "$iqn" "$w" "$P1" "$P2"

  local mark
  mark=$(wc -l <"$OUT/daemon.log" 2>/dev/null || echo 0)
  start_daemon
  # SIGHUP only once the daemon says READY (before that it has no handler yet, as under systemd,
  # which sends reloads only after READY=1).
  lk_check_wait "j: daemon READY without the names" 90 grep -q READY=1 "$NOTIFY_LOG"
  kill -HUP "$DPID"
  # Nothing to wait for: the check is that nothing happens; give the daemon 10 s of passes.
  sleep 10
  tail -n +"$((mark + 1))" "$OUT/daemon.log" >"$OUT/j-daemon.log"
  lk_log "j: daemon status without the names: $(st "vol['named']['state'] + ' ' + str(vol['named']['reason'])")"
  lk_check "j: the daemon without the names took no destructive action" no_destructive "$OUT/j-daemon.log"
  lk_check "j: the daemon is still running after 10 s and a SIGHUP" kill -0 "$DPID"
  lk_check_eq "j: sessions unchanged after 10 s of the daemon and a SIGHUP" "$before" "$(sids_of "$iqn")"
  lk_check "j: still attached under the daemon" volume_attached "$iqn" "$w" "$P1" "$P2"
  stop_daemon

  printf '127.0.0.1 san-a.lunkeeper.test\n127.0.0.2 san-b.lunkeeper.test\n' >>/etc/hosts
  lk_apply
  lk_check_eq "j: names resolve again: apply converges (exit 0)" 0 "$APPLY_RC"
  lk_check_eq "j: same sessions as before" "$before" "$(sids_of "$iqn")"
  lk_io_stop names
  lk_check "j: writer: 0 I/O errors, 0 acknowledged writes lost or corrupt" io_clean names
  vol named "$iqn" 0 absent san-a.lunkeeper.test:3260 san-b.lunkeeper.test:3260 | write_conf
  lk_apply
  lk_check "j: detached, nothing left (exit $APPLY_RC)" nothing_of_lunkeeper_left "" ""
  cp /run/hosts.orig /etc/hosts
}

# ---------------------------------------------------------------------------------------------
# Row g: one portal black-holed (nftables) during an attach by the daemon.
# ---------------------------------------------------------------------------------------------

# first_usable NAME WWID: in the background, record in $LK_STATE/usable.NAME the ms timestamp at
# which a 4 KiB O_DIRECT read of /dev/mapper/WWID first succeeds (gives up after 120 s).
first_usable() {
  rm -f "$LK_STATE/usable.$1"
  (
    local deadline=$(($(_lk_now_ms) + 120000))
    while (($(_lk_now_ms) < deadline)); do
      if [ -b "/dev/mapper/$2" ] && timeout 5 dd if="/dev/mapper/$2" of=/dev/null bs=4k count=1 iflag=direct status=none 2>/dev/null; then
        _lk_now_ms >"$LK_STATE/usable.$1"
        exit 0
      fi
      sleep 0.1
    done
  ) &
}

row_g_portal_blackholed() {
  local iqn1=$IQN_PREFIX:hole iqn2=$IQN_PREFIX:other w1 w2 t0 t1 t2 login_timeout=30
  lk_target hole "$iqn1" --portals "$P1 $P2"
  lk_target other "$iqn2" --portals "$P1"
  w1=$(lk_wwid hole 0)
  w2=$(lk_wwid other 0)
  nft add table inet lkg
  nft add chain inet lkg out '{ type filter hook output priority 0; }'
  nft add rule inet lkg out ip daddr 127.0.0.2 tcp dport 3260 drop
  lk_log "g: $(nft list ruleset | tr '\n\t' '  ')"
  { vol hole "$iqn1" 0 present "$P1" "$P2"; echo; vol other "$iqn2" 0 present "$P1"; } | LOGIN_TIMEOUT=$login_timeout write_conf
  first_usable hole "$w1"
  first_usable other "$w2"
  t0=$(_lk_now_ms)
  start_daemon debug
  lk_wait_for 60 test -s "$LK_STATE/usable.hole" -a -s "$LK_STATE/usable.other" || true
  t1=$(($(cat "$LK_STATE/usable.hole" 2>/dev/null || echo 99999999999999) - t0))
  t2=$(($(cat "$LK_STATE/usable.other" 2>/dev/null || echo 99999999999999) - t0))
  lk_log "g: daemon start to usable: hole (P2 black-holed) $t1 ms, other (P1 only) $t2 ms"
  lk_check "g: volume with a black-holed portal usable through the other within login_timeout + 5 s ($t1 ms <= $(((login_timeout + 5) * 1000)))" test "$t1" -le $(((login_timeout + 5) * 1000))
  # "Not delayed": usable before the login through the black hole gave up (the first failed
  # login to P2 in the daemon's log, or now if it has not failed yet).
  local t_fail
  t_fail=$(python3 - "$OUT/daemon.log" "$t0" "$iqn1 via $P2" <<'PY'
import datetime, re, sys, time
log, t0, what = sys.argv[1], int(sys.argv[2]), sys.argv[3]
for line in open(log):
    m = re.match(r"(\S+Z) .*step\{action=login\}: .*log in to " + re.escape(what) + r".* result=failed", line)
    if m:
        t = datetime.datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp() * 1000
        if t >= t0:
            print(int(t - t0))
            break
else:
    print(int(time.time() * 1000 - t0))
PY
)
  lk_log "g: first failed login through the black hole at $t_fail ms"
  lk_check "g: the other volume not delayed: usable ($t2 ms) before the login through the black hole gave up ($t_fail ms)" test "$t2" -lt "$t_fail"
  lk_io_start hole "/dev/mapper/$w1"
  lk_check_wait "g: status shows hole degraded with $P2 not active" 30 st_is "vol['hole']['state'] + ' ' + str([p['state'] for p in vol['hole']['paths'] if p['portal'] == '$P2'][0] != 'active')" "degraded True"
  lk_log "g: status: $(st "[(v['name'], v['state'], [p['state'] for p in v['paths']]) for v in s['volumes']]")"
  # Watchdog pings and status writes keep coming while the login to P2 hangs: wait until the
  # daemon is at least login_timeout into the attach, then measure the largest ping gap so far.
  while (($(_lk_now_ms) - t0 < (login_timeout + 5) * 1000)); do sleep 0.2; done
  local gap pings
  pings=$(grep -c 'WATCHDOG=1' "$NOTIFY_LOG" || true)
  gap=$(python3 - "$NOTIFY_LOG" <<'PY'
import sys
t = [float(l.split()[0]) for l in open(sys.argv[1]) if 'WATCHDOG=1' in l]
print(int(max((b - a for a, b in zip(t, t[1:])), default=999) * 1000))
PY
)
  lk_check "g: watchdog pings continue during the black hole ($pings pings, largest gap $gap ms <= 3000)" test "$gap" -le 3000
  lk_check "g: still only one slave in hole's map while P2 is black-holed" lk_map_has_paths "$w1" 1
  t0=$(_lk_now_ms)
  nft delete table inet lkg
  lk_check_wait "g: rule removed: hole ready with both paths, no command typed" 120 daemon_ready hole other
  lk_log "g: rule removed to ready: $(($(_lk_now_ms) - t0)) ms"
  lk_check "g: hole fully attached" volume_attached "$iqn1" "$w1" "$P1" "$P2"
  lk_check "g: other fully attached" volume_attached "$iqn2" "$w2" "$P1"
  stop_daemon
  lk_io_stop hole
  lk_check "g: writer across the rule removal: 0 I/O errors, 0 acknowledged writes lost or corrupt" io_clean hole
  { vol hole "$iqn1" 0 absent "$P1" "$P2"; echo; vol other "$iqn2" 0 absent "$P1"; } | write_conf
  lk_apply
  lk_check "g: detached, nothing left (exit $APPLY_RC)" nothing_of_lunkeeper_left "" ""
}

# ---------------------------------------------------------------------------------------------
# Row d: one portal flapping (TPG down/up every 2 s for 60 s) under checksummed I/O with the
# daemon running.
# ---------------------------------------------------------------------------------------------

cpu_ticks() { # PID: utime stime cutime cstime from /proc/PID/stat
  awk '{ print $14, $15, $16, $17 }' "/proc/$1/stat"
}

row_d_portal_flapping() {
  local iqn=$IQN_PREFIX:flap w before c0 c1 t0 i
  lk_target flap "$iqn" --portals "$P1 $P2" --tpg-per-portal
  w=$(lk_wwid flap 0)
  vol flap "$iqn" 0 present "$P1" "$P2" | write_conf
  start_daemon
  lk_check_wait "d: daemon attached the volume" 90 daemon_ready flap
  lk_io_start flap "/dev/mapper/$w"
  lk_wait_for 60 io_past flap 0
  before=$(sids_of "$iqn")
  local mark
  mark=$(wc -l <"$OUT/daemon.log")
  c0=$(cpu_ticks "$DPID")
  t0=$(_lk_now_ms)
  for i in $(seq 1 15); do
    lk_portal_enable "$iqn" "$P2" 0 2>/dev/null
    while (($(_lk_now_ms) - t0 < (4 * i - 2) * 1000)); do sleep 0.1; done
    lk_portal_enable "$iqn" "$P2" 1 2>/dev/null
    while (($(_lk_now_ms) - t0 < 4 * i * 1000)); do sleep 0.1; done
  done
  c1=$(cpu_ticks "$DPID")
  local secs=$((($(_lk_now_ms) - t0) / 1000)) hz cpu
  hz=$(getconf CLK_TCK)
  cpu=$(python3 -c "
a, b = '$c0'.split(), '$c1'.split()
d = [int(y) - int(x) for x, y in zip(a, b)]
print(f'user {d[0]/$hz:.2f} s, system {d[1]/$hz:.2f} s, reaped children {(d[2]+d[3])/$hz:.2f} s')")
  lk_log "d: daemon CPU over the ${secs} s of flapping: $cpu"
  echo "d: daemon (pid $DPID) CPU over ${secs} s of flapping: $cpu" >>"$OUT/figures.txt"
  tail -n +"$((mark + 1))" "$OUT/daemon.log" >"$OUT/d-daemon-flap.log"
  lk_check_wait "d: ready at the end with both paths active" 90 daemon_ready flap
  lk_check "d: volume fully attached" volume_attached "$iqn" "$w" "$P1" "$P2"
  lk_check_eq "d: same sessions as before the flapping (none logged out)" "$before" "$(sids_of "$iqn")"
  lk_check "d: no destructive action while flapping (daemon CPU over ${secs} s: $cpu)" no_destructive "$OUT/d-daemon-flap.log"
  stop_daemon
  lk_io_stop flap
  lk_check "d: writer across 60 s of flapping: 0 I/O errors, 0 acknowledged writes lost or corrupt" io_clean flap
  vol flap "$iqn" 0 absent "$P1" "$P2" | write_conf
  lk_apply
  lk_check "d: detached, nothing left (exit $APPLY_RC)" nothing_of_lunkeeper_left "" ""
}

# ---------------------------------------------------------------------------------------------
# Row k: CHAP secrets never leave the node records, at LUNKEEPER_LOG=trace, while every
# process's command line is sampled every 10 ms.
# ---------------------------------------------------------------------------------------------

row_k_chap_secrets() {
  local iqn1=$IQN_PREFIX:secret1 iqn2=$IQN_PREFIX:secret2 w1 w2
  local s1=Kx7-one-way-s3cr3t-4711 s2=Kx7-mutual-s3cr3t-4712 s3=Kx7-target-s3cr3t-4713
  # The secrets go to commands only in files: the sampler must find none in any argv, this
  # script's included.
  local pattern=$LK_STATE/k-secrets
  printf '%s\n' "$s1" "$s2" "$s3" >"$pattern"
  lk_target secret1 "$iqn1" --portals "$P1 $P2" --chap kuser1 "$s1"
  lk_target secret2 "$iqn2" --portals "$P1" --chap kuser2 "$s2" --mutual ktarget "$s3"
  w1=$(lk_wwid secret1 0)
  w2=$(lk_wwid secret2 0)
  echo "$s1" >"$SECRETS/k1"
  echo "$s2" >"$SECRETS/k2"
  echo "$s3" >"$SECRETS/k3"
  chmod 600 "$SECRETS"/k?
  conf_k() {
    {
      vol sec1 "$iqn1" 0 "$1" "$P1" "$P2"
      chap kuser1 "$SECRETS/k1"
      echo
      vol sec2 "$iqn2" 0 "$1" "$P1"
      chap kuser2 "$SECRETS/k2" ktarget "$SECRETS/k3"
    } | write_conf
  }
  local kd=$OUT/k
  mkdir -p "$kd"
  # The sampler: every 10 ms, every process's argv; lines holding a secret go to hits.
  python3 - "$kd" "$pattern" <<'PY' &
import os, sys, time
d = sys.argv[1]
secrets = [l.strip().encode() for l in open(sys.argv[2]) if l.strip()]
seen, samples, hits = set(), 0, []
stop = os.path.join(d, "sampler.stop")
while not os.path.exists(stop):
    samples += 1
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                argv = f.read()
        except OSError:
            continue
        if not argv:
            continue
        args = argv.rstrip(b"\0").split(b"\0")
        seen.add(b" ".join([args[0].rsplit(b"/", 1)[-1]] + [a[:24] for a in args[1:3]]))
        if any(s in argv for s in secrets):
            hits.append(argv.replace(b"\0", b" ").decode(errors="replace"))
    time.sleep(0.01)
with open(os.path.join(d, "sampler.txt"), "w") as f:
    f.write(f"samples {samples}\nhits {len(hits)}\n")
    for h in hits[:20]:
        f.write(f"HIT {h}\n")
    for s in sorted(seen):
        f.write(f"seen {s.decode(errors='replace')}\n")
PY
  local sampler=$!
  # The sampler can miss a short-lived process (a scan of /proc takes far longer than 10 ms in
  # an emulated guest), so every iscsiadm lunkeeper runs also goes through a shim first in PATH
  # that records its argv.
  local shim=$LK_STATE/shim
  mkdir -p "$shim"
  printf '#!/bin/bash\nprintf "%%q " "$@" >>%q\necho >>%q\nexec /usr/bin/iscsiadm "$@"\n' "$kd/iscsiadm-argv.log" "$kd/iscsiadm-argv.log" >"$shim/iscsiadm"
  chmod +x "$shim/iscsiadm"
  [[ -x /usr/bin/iscsiadm ]] || sed -i 's|/usr/bin/iscsiadm|/usr/sbin/iscsiadm|' "$shim/iscsiadm"
  local PATH=$shim:$PATH
  local outputs=()
  LUNKEEPER_LOG=trace "$LK" --config "$CONF" plan --json >"$kd/plan-empty.json" 2>"$kd/plan-empty.log" || true
  conf_k present
  LUNKEEPER_LOG=trace "$LK" --config "$CONF" plan --json >"$kd/plan-attach.json" 2>"$kd/plan-attach.log" || true
  APPLY_LEVEL=trace lk_apply
  outputs+=("$APPLY_LOG")
  lk_check_eq "k: CHAP volumes attached at trace level (exit 0, $APPLY_MS ms)" 0 "$APPLY_RC"
  lk_check "k: one-way CHAP volume attached on 2 portals" volume_attached "$iqn1" "$w1" "$P1" "$P2"
  lk_check "k: mutual CHAP volume attached" volume_attached "$iqn2" "$w2" "$P1"
  LUNKEEPER_LOG=trace "$LK" --config "$CONF" status --json >"$kd/status.json.out" 2>"$kd/status.log" || true
  LUNKEEPER_LOG=trace "$LK" --config "$CONF" status >"$kd/status.out" 2>>"$kd/status.log" || true
  LUNKEEPER_LOG=trace "$LK" --config "$CONF" plan --json >"$kd/plan-steady.json" 2>"$kd/plan-steady.log" || true
  cp "$OWNED" "$kd/owned-attached.json"
  # The daemon at trace level over the attached volumes: its log and status.json.
  start_daemon trace
  lk_wait_for 60 daemon_ready sec1 sec2 || true
  cp "$STATUS" "$kd/daemon-status.json" 2>/dev/null || true
  LUNKEEPER_LOG=trace "$LK" --config "$CONF" status --json >"$kd/status-daemon.out" 2>>"$kd/status.log" || true
  stop_daemon
  # While attached, the secrets are only in the node records.
  local holders
  holders=$(grep -rlFf "$pattern" /etc/iscsi 2>/dev/null | sort | tr '\n' ' ')
  lk_log "k: files under /etc/iscsi holding a secret while attached: $holders"
  lk_check "k: while attached, only node records under /etc/iscsi hold a secret ($holders)" \
    bash -c "for f in $holders; do case \$f in /etc/iscsi/nodes/$iqn1/*|/etc/iscsi/nodes/$iqn2/*) ;; *) echo \"not a node record: \$f\"; exit 1 ;; esac; done; [ -n '$holders' ]"
  conf_k absent
  LUNKEEPER_LOG=trace "$LK" --config "$CONF" plan --json >"$kd/plan-detach.json" 2>"$kd/plan-detach.log" || true
  APPLY_LEVEL=trace lk_apply
  outputs+=("$APPLY_LOG")
  lk_check_eq "k: CHAP volumes detached at trace level (exit 0, $APPLY_MS ms)" 0 "$APPLY_RC"
  cp "$OWNED" "$kd/owned-detached.json"
  touch "$kd/sampler.stop"
  wait "$sampler" || true
  lk_log "k: sampler: $(head -n 2 "$kd/sampler.txt" | tr '\n' ' '), $(grep -c '^seen ' "$kd/sampler.txt") distinct commands, iscsiadm among them: $(grep -c '^seen iscsiadm' "$kd/sampler.txt")"
  lk_check "k: argv sampled every 10 ms ($(sed -n 1p "$kd/sampler.txt")) saw iscsiadm run and no secret in any argv" \
    bash -c "grep -q '^hits 0\$' '$kd/sampler.txt' && grep -q '^seen iscsiadm' '$kd/sampler.txt'"
  local f sizes=""
  for f in "${outputs[@]}" "$OUT/daemon.log" "$kd"/*.log; do sizes+="${f##*/}=$(wc -l <"$f") "; done
  lk_log "k: log lines searched: $sizes"
  lk_check "k: every iscsiadm's argv recorded by a shim ($(wc -l <"$kd/iscsiadm-argv.log" 2>/dev/null || echo 0) runs) holds no secret" \
    bash -c "test -s '$kd/iscsiadm-argv.log' && ! grep -qFf '$pattern' '$kd/iscsiadm-argv.log'"
  lk_check "k: no secret in any log line (apply and daemon at trace: $sizes)" no_secret_in "$pattern" "${outputs[@]}" "$OUT/daemon.log" "$kd"/*.log
  lk_check "k: no secret in status, status --json, status.json (daemon) or plan --json (before, attach, steady, detach)" \
    no_secret_in "$pattern" "$kd/status.out" "$kd/status.json.out" "$kd/status-daemon.out" "$kd/daemon-status.json" "$kd"/plan-{empty,attach,steady,detach}.json
  lk_check "k: status.json and plan --json are not empty" bash -c "test -s $kd/daemon-status.json && test -s $kd/plan-attach.json && test -s $kd/plan-detach.json"
  lk_check "k: no secret in owned.json (attached, detached)" no_secret_in "$pattern" "$kd"/owned-{attached,detached}.json
  lk_check_eq "k: after detach no file under /etc/iscsi, /var/lib/lunkeeper or /run/lunkeeper holds a secret" "" \
    "$(grep -rlFf "$pattern" /etc/iscsi /var/lib/lunkeeper "$RUNDIR" 2>/dev/null || true)"
  lk_check "k: detached, nothing left" nothing_of_lunkeeper_left "" ""
}

# ---------------------------------------------------------------------------------------------
# Row f: iscsid, multipathd and udevd each killed -9 during an attach, then started again.
# ---------------------------------------------------------------------------------------------

start_iscsid() { (setsid iscsid -f >>"$OUT/logs/iscsid.log" 2>&1 &); lk_wait_for 30 lk_iscsid_ready; }
start_multipathd() { (setsid multipathd -d -s -v3 >>"$OUT/logs/multipathd.log" 2>&1 &); lk_wait_for 30 lk_multipathd_ready; }
start_udevd() {
  local udevd
  for udevd in /lib/systemd/systemd-udevd /usr/lib/systemd/systemd-udevd; do [[ -x $udevd ]] && break; done
  "$udevd" --daemon
  lk_wait_for 30 udevadm control --ping
}

row_f_stack_daemons_killed() {
  local iqn1=$IQN_PREFIX:stack1 iqn2=$IQN_PREFIX:stack2 w1 w2 victim proc pid rc extra v
  lk_target stack1 "$iqn1" --portals "$P1 $P2"
  lk_target stack2 "$iqn2" --portals "$P1 $P2"
  w1=$(lk_wwid stack1 0)
  w2=$(lk_wwid stack2 0)
  both_attached() { volume_attached "$iqn1" "$w1" "$P1" "$P2" && volume_attached "$iqn2" "$w2" "$P1" "$P2"; }
  conf_f() { { vol st1 "$iqn1" 0 "$1" "$P1" "$P2"; echo; vol st2 "$iqn2" 0 "$1" "$P1" "$P2"; } | write_conf; }
  for victim in iscsid multipathd udevd; do
    proc=$victim
    [[ $victim == udevd ]] && proc=systemd-udevd
    conf_f present
    N=$((N + 1))
    local log=$OUT/apply-$ROW-$N-$victim.log
    LUNKEEPER_LOG=debug "$LK" --config "$CONF" apply --timeout 240 >"$log" 2>&1 &
    pid=$!
    # Kill as soon as the attach is under way: its first step (taking the volumes on, before
    # records and logins) done. The release build finishes the whole attach within a second or
    # two, so a tight loop on the first step, not on a count of them.
    local until=$(($(_lk_now_ms) + 60000))
    until grep -q 'step{action=own_volume}' "$log" || (($(_lk_now_ms) > until)); do sleep 0.01; done
    local victims
    victims=$(pgrep -x "$proc" | tr '\n' ' ')
    [[ $victim == udevd ]] && victims=$(pgrep -o -x "$proc")
    kill -9 $victims
    lk_log "f: killed $proc ($victims) after $(steps_in "$log") steps of the attach"
    for v in $victims; do lk_wait_for 10 test ! -e "/proc/$v" || true; done
    sleep 3
    lk_log "f: status while $proc is down: $("$LK" --config "$CONF" status 2>&1 | tr '\n' '|')"
    "start_$victim"
    lk_log "f: $proc started again"
    rc=0
    wait "$pid" || rc=$?
    lk_log "f: the apply that saw $proc killed exited $rc after $(steps_in "$log") steps: $(grep -v ' INFO ' "$log" | tail -n 5 | tr '\n' '|')"
    extra=""
    if ((rc != 0)); then
      lk_apply
      extra=" after one more apply (first exit $rc)"
      rc=$APPLY_RC
    fi
    lk_check_eq "f: $proc killed during an attach and restarted: apply converges$extra" 0 "$rc"
    # After iscsid is back it re-syncs the kernel's sessions; one may reconnect once first.
    lk_check_wait "f: $proc: both volumes fully attached" 60 both_attached
    conf_f absent
    lk_apply
    lk_check "f: $proc: detached afterwards, nothing left (exit $APPLY_RC)" nothing_of_lunkeeper_left "" ""
  done
}

# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

lk_boot_stack
mkdir -p "$SECRETS" "$CONF_DIR"
chmod 700 "$SECRETS"
(python3 "$LK_VM_DIR/notify-listener.py" /run/lk-notify.sock "$NOTIFY_LOG" &)
lk_wait_for 10 test -S /run/lk-notify.sock
lk_log "lunkeeper: $("$LK" --version)"

ROWS=("$@")
((${#ROWS[@]})) || ROWS=(a c j g d k f)
for row in "${ROWS[@]}"; do
  case $row in
  a) run_row a row_a_kill_apply ;;
  c) run_row c row_c_all_portals_down ;;
  j) run_row j row_j_names_stop_resolving ;;
  g) run_row g row_g_portal_blackholed ;;
  d) run_row d row_d_portal_flapping ;;
  k) run_row k row_k_chap_secrets ;;
  f) run_row f row_f_stack_daemons_killed ;;
  *) _lk_record FAIL "row $row" "no such row (rows: a c j g d k f)" ;;
  esac
done
lk_log "row times: $(tr '\n' ';' <"$OUT/row-times.txt")"
lk_finish
