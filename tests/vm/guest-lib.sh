# shellcheck shell=bash
# guest-lib.sh: helpers for scripts that run as root INSIDE the test VM (see vm.sh).
#
# Source it from a guest script:
#     . "$(dirname "${BASH_SOURCE[0]}")/guest-lib.sh"
# It turns on `set -euo pipefail`, expects $OUT (the results dir shared with the host) and keeps
# every record there:
#     $OUT/results       one line per check: "PASS name" or "FAIL name: details"
#     $OUT/verdict       "N passed, M failed", written by lk_finish (or by the EXIT trap)
#     $OUT/checks/       full output of each check
#     $OUT/logs/         iscsid, multipathd, udev monitor logs
#     $OUT/state-*.txt   lk_dump_state snapshots (automatic when a check fails)
#
# Every wait is a bounded poll (lk_wait_for); nothing sleeps a fixed time to synchronise.
# All functions are safe under `set -euo pipefail`. `nullglob` is on: an unmatched glob expands
# to nothing (quote globs you pass to commands such as ls, or use bash -c '...').
#
# Functions (details above each one):
#   stack     lk_boot_stack [--find-multipaths MODE | --multipath-conf FILE] [--initiator IQN]
#   targets   lk_target NAME IQN [--luns "0 300"] [--portals "IP:PORT ..."] [--size 64M]
#                [--chap U P [--mutual U P]] [--initiator IQN] [--tpg-per-portal]
#             lk_wwid NAME LUN, lk_target_iqn NAME, lk_target_remove NAME,
#             lk_tpg_enable IQN 0|1 [TPGT...], lk_portal_enable IQN PORTAL 0|1, lk_portal_tpg,
#             lk_np_remove IQN PORTAL, lk_np_add IQN PORTAL [TPGT]
#   checks    lk_check NAME CMD..., lk_check_eq NAME EXPECTED ACTUAL, lk_check_wait NAME SECS CMD...,
#             lk_check_wwid NAME LUN sdX, lk_fact FILE TITLE CMD..., lk_finish
#   waiting   lk_wait_for SECS CMD..., lk_timed VAR CMD...
#   sysfs     lk_sessions [IQN], lk_session_for IQN PORTAL, lk_session_state SID,
#             lk_session_host SID, lk_session_portal SID, lk_scan H "C T L", lk_host_devices H,
#             lk_hctl_disk HCTL, lk_disks_of_wwid WWID, lk_disk_wwid sdX, lk_dm_of_wwid WWID,
#             lk_dm_slaves dm-N, lk_map_has_paths WWID N, lk_mpathd CMD...
#   I/O       lk_io_start NAME DEV [SLOTS], lk_io_stop NAME, lk_io_verify NAME, lk_io_errors NAME,
#             lk_io_acked NAME (checksummed O_DIRECT writer/reader, tests/vm/lk-io.py)
#   teardown  lk_dump_state LABEL, lk_cleanup_all
# Call multi-step functions (lk_boot_stack, lk_target, ...) directly, not through lk_check:
# bash turns `set -e` off inside a command whose status is tested, so a failing step inside
# would not stop them. A script that stops early is still judged: the EXIT trap records
# "FAIL guest-script-completed" and writes the verdict.

set -eEuo pipefail # -E: the ERR trap below also sees failures inside functions
shopt -s nullglob

: "${OUT:?OUT must name the results directory (vm.sh exports it)}"
LK_VM_DIR=${LK_VM_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}
LK_STATE=${LK_STATE:-/run/lunkeeper-vm}
LK_BACKSTORE_DIR=${LK_BACKSTORE_DIR:-/run/lunkeeper-vm/backstores}
LK_INITIATOR_IQN=${LK_INITIATOR_IQN:-iqn.2026-11.test.lunkeeper:initiator}
LK_CFG=/sys/kernel/config/target
LK_FILEIO_HBA=fileio_0
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH

mkdir -p "$OUT" "$OUT/checks" "$OUT/logs" "$LK_STATE"
: >>"$OUT/results"
_LK_T0=${EPOCHREALTIME//[.,]/}
_LK_FINISHED=0
_LK_NCHECK=0
_LK_LAST_ERR=""

# ---------------------------------------------------------------------------------------------
# Logging, timing, waiting
# ---------------------------------------------------------------------------------------------

# _lk_now_ms: milliseconds since the epoch.
_lk_now_ms() {
  local t=${EPOCHREALTIME//[.,]/}
  echo $((t / 1000))
}

# lk_elapsed: seconds since guest-lib was sourced, e.g. "12.345".
lk_elapsed() {
  local t=${EPOCHREALTIME//[.,]/}
  local d=$(((t - _LK_T0) / 1000))
  printf '%d.%03d' $((d / 1000)) $((d % 1000))
}

# lk_log MSG...: a timestamped line on the console (stderr) and in $OUT/guest.log.
lk_log() {
  local line
  line="[lk $(lk_elapsed)s] $*"
  echo "$line" >&2
  echo "$line" >>"$OUT/guest.log"
}

lk_die() {
  lk_log "FATAL: $*"
  return 1
}

# lk_wait_for SECS CMD...: run CMD every 0.1 s until it succeeds (return 0) or SECS seconds
# have passed (return 1). CMD's output is discarded.
lk_wait_for() {
  local secs=$1
  shift
  local deadline=$(($(_lk_now_ms) + secs * 1000))
  while :; do
    if "$@" >/dev/null 2>&1; then
      return 0
    fi
    if (($(_lk_now_ms) >= deadline)); then
      lk_log "timeout after ${secs}s waiting for: $*"
      return 1
    fi
    sleep 0.1
  done
}

# lk_timed VAR CMD...: run CMD, store its wall time in ms in VAR, return CMD's status.
lk_timed() {
  local -n _lk_timed_var=$1
  shift
  local t0 rc=0
  t0=$(_lk_now_ms)
  "$@" || rc=$?
  _lk_timed_var=$(($(_lk_now_ms) - t0))
  return "$rc"
}

# ---------------------------------------------------------------------------------------------
# Checks and verdict
# ---------------------------------------------------------------------------------------------

_lk_record() { # STATUS NAME [DETAILS]
  local status=$1 name=$2 details=${3:-}
  if [[ $status == PASS ]]; then
    echo "PASS $name" >>"$OUT/results"
    lk_log "PASS $name"
  else
    echo "FAIL $name: $details" >>"$OUT/results"
    lk_log "FAIL $name: $details"
  fi
}

_lk_oneline() { # collapse stdin to one line of at most 400 characters
  tr '\n\t' '  ' | sed -e 's/  */ /g' -e 's/^ //' -e 's/ $//' | cut -c1-400
}

# lk_check NAME CMD...: run CMD; record "PASS NAME" if it exits 0, else
# "FAIL NAME: exit N: <output>". Full output goes to $OUT/checks/NNN.log. Returns CMD's status
# but never trips `set -e` (use `lk_check ... || handle` if the script must react).
lk_check() {
  local name=$1
  shift
  _LK_NCHECK=$((_LK_NCHECK + 1))
  local log
  log=$(printf '%s/checks/%03d.log' "$OUT" "$_LK_NCHECK")
  local rc=0
  {
    echo "check: $name"
    printf 'command:'
    printf ' %q' "$@"
    echo
  } >"$log"
  "$@" >>"$log" 2>&1 || rc=$?
  echo "exit: $rc" >>"$log"
  if ((rc == 0)); then
    _lk_record PASS "$name"
  else
    _lk_record FAIL "$name" "exit $rc: $(sed -e '1,2d' -e '$d' "$log" | tail -n 15 | _lk_oneline)"
  fi
  return 0
}

# lk_check_eq NAME EXPECTED ACTUAL: record PASS if the two strings are equal.
lk_check_eq() {
  local name=$1 expected=$2 actual=$3
  _LK_NCHECK=$((_LK_NCHECK + 1))
  if [[ "$expected" == "$actual" ]]; then
    _lk_record PASS "$name"
  else
    _lk_record FAIL "$name" "expected '$(printf '%s' "$expected" | _lk_oneline)', got '$(printf '%s' "$actual" | _lk_oneline)'"
  fi
  return 0
}

# lk_check_wait NAME SECS CMD...: PASS if CMD succeeds within SECS seconds.
lk_check_wait() {
  local name=$1 secs=$2
  shift 2
  lk_check "$name" lk_wait_for "$secs" "$@"
}

# lk_failed_count: number of FAIL lines so far.
lk_failed_count() {
  grep -c '^FAIL ' "$OUT/results" || true
}

# lk_finish: write $OUT/verdict ("N passed, M failed"); dump state if anything failed.
lk_finish() {
  local passed failed
  passed=$(grep -c '^PASS ' "$OUT/results" || true)
  failed=$(grep -c '^FAIL ' "$OUT/results" || true)
  if ((failed > 0)); then
    lk_dump_state final || true
  fi
  _lk_capture_logs || true
  echo "$passed passed, $failed failed" >"$OUT/verdict"
  _LK_FINISHED=1
  lk_log "verdict: $passed passed, $failed failed"
  sync
}

_lk_on_err() { # STATUS LINE COMMAND
  _LK_LAST_ERR="line $2: '$3' exited $1"
}

_lk_on_exit() {
  local rc=$1
  if ((_LK_FINISHED == 0)); then
    _lk_record FAIL "guest-script-completed" "script stopped early (exit $rc); last error: ${_LK_LAST_ERR:-none}"
    lk_finish || true
  fi
}

trap '_lk_on_err $? $LINENO "$BASH_COMMAND"' ERR
trap '_lk_on_exit $?' EXIT

# ---------------------------------------------------------------------------------------------
# Facts: commands and their outputs, verbatim, for captures
# ---------------------------------------------------------------------------------------------

# lk_fact FILE TITLE CMD...: append "### TITLE", the command, its output and exit status to
# FILE (relative to $OUT/captures). Sets LK_FACT_RC and LK_FACT_OUT. Never fails.
lk_fact() {
  local file=$OUT/captures/$1 title=$2
  shift 2
  mkdir -p "$(dirname "$file")"
  local rc=0 out
  out=$("$@" 2>&1) || rc=$?
  # shellcheck disable=SC2034 # read by the calling script
  LK_FACT_RC=$rc
  # shellcheck disable=SC2034
  LK_FACT_OUT=$out
  {
    echo "### $title"
    echo '```'
    printf '$'
    printf ' %q' "$@"
    echo
    [[ -n "$out" ]] && printf '%s\n' "$out"
    echo "[exit status: $rc]"
    echo '```'
    echo
  } >>"$file"
  lk_log "fact: $title -> exit $rc"
  return 0
}

# ---------------------------------------------------------------------------------------------
# Booting the storage stack
# ---------------------------------------------------------------------------------------------

LK_MODULES=(configfs target_core_mod target_core_file target_core_iblock iscsi_target_mod
  scsi_transport_iscsi libiscsi libiscsi_tcp iscsi_tcp sd_mod sg
  dm_mod dm_multipath dm_round_robin dm_service_time dm_queue_length
  scsi_dh_alua scsi_dh_emc scsi_dh_rdac)

_lk_abstract_listening() { # NAME: an abstract unix socket @NAME is listening
  grep -q " @$1\$" /proc/net/unix
}

_lk_abstract_connect() { # NAME: connect() to @NAME succeeds
  python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.settimeout(2); s.connect("\0"+sys.argv[1])' "$1"
}

lk_iscsid_ready() {
  _lk_abstract_listening ISCSIADM_ABSTRACT_NAMESPACE && _lk_abstract_connect ISCSIADM_ABSTRACT_NAMESPACE
}

lk_multipathd_ready() {
  local reply
  reply=$(timeout 10 multipathd show daemon 2>&1) || return 1
  # "pid N idle" between checker runs, "pid N running" during one; "configure" while starting.
  [[ $reply =~ ^pid\ [0-9]+\ (idle|running)$ ]]
}

# lk_boot_stack [--multipath-conf FILE | --find-multipaths MODE] [--initiator IQN]
# Loads modules, mounts configfs, adds 127.0.0.2/8, writes the initiator name, wipes any node
# records/wwids inherited from the host's /etc (the guest's /etc is a tmpfs overlay), and starts
# systemd-udevd (if virtme did not), iscsid and multipathd. By default there is NO
# /etc/multipath.conf: multipathd runs on its compiled-in defaults (find_multipaths strict).
lk_boot_stack() {
  local mpconf="" find_mp=""
  while (($#)); do
    case $1 in
    --multipath-conf) mpconf=$2; shift 2 ;;
    --find-multipaths) find_mp=$2; shift 2 ;;
    --initiator) LK_INITIATOR_IQN=$2; shift 2 ;;
    *) lk_die "lk_boot_stack: unknown argument $1" ;;
    esac
  done
  lk_log "boot stack: kernel $(uname -r)"

  modprobe -a "${LK_MODULES[@]}" || lk_die "modprobe -a ${LK_MODULES[*]} failed"
  if ! mountpoint -q /sys/kernel/config; then
    mount -t configfs configfs /sys/kernel/config
  fi
  [[ -d $LK_CFG ]] || lk_die "$LK_CFG missing after loading target_core_mod"

  ip link set lo up
  ip -4 addr show dev lo | grep -q ' 127\.0\.0\.2/' || ip addr add 127.0.0.2/8 dev lo

  mkdir -p "$LK_BACKSTORE_DIR"
  mountpoint -q "$LK_BACKSTORE_DIR" || mount -t tmpfs -o mode=0700 lk-backstores "$LK_BACKSTORE_DIR"

  # udev first: multipathd and the tests read udev's processed events and symlinks.
  if ! udevadm control --ping >/dev/null 2>&1; then
    local udevd
    for udevd in /lib/systemd/systemd-udevd /usr/lib/systemd/systemd-udevd; do
      [[ -x $udevd ]] && break
    done
    lk_log "starting $udevd"
    "$udevd" --daemon
  fi
  lk_wait_for 30 udevadm control --ping || lk_die "systemd-udevd does not answer --ping"
  if [[ ${LK_UDEV_MONITOR:-1} == 1 ]]; then
    (udevadm monitor --udev --property >"$OUT/logs/udev-monitor.log" 2>&1 &)
  fi

  # Initiator: a clean open-iscsi database (the guest's /etc is a throwaway overlay).
  mkdir -p /etc/iscsi
  echo "InitiatorName=$LK_INITIATOR_IQN" >/etc/iscsi/initiatorname.iscsi
  rm -rf /etc/iscsi/nodes /etc/iscsi/send_targets /etc/iscsi/ifaces /var/lib/iscsi
  mkdir -p /etc/iscsi/nodes /etc/iscsi/send_targets
  # Own session: iscsid SIGTERMs its whole process group when it stops, which would take
  # the guest script (and so the VM) with it when a scenario restarts iscsid.
  (setsid iscsid -f >"$OUT/logs/iscsid.log" 2>&1 &)
  lk_wait_for 30 lk_iscsid_ready || lk_die "iscsid does not answer on @ISCSIADM_ABSTRACT_NAMESPACE"

  # multipathd: compiled-in defaults unless asked otherwise.
  rm -rf /etc/multipath.conf /etc/multipath
  mkdir -p /etc/multipath
  if [[ -n $mpconf ]]; then
    cp "$mpconf" /etc/multipath.conf
  elif [[ -n $find_mp ]]; then
    printf 'defaults {\n\tuser_friendly_names no\n\tfind_multipaths %s\n}\n' "$find_mp" >/etc/multipath.conf
  fi
  (setsid multipathd -d -s -v"${LK_MPATHD_VERBOSITY:-3}" >"$OUT/logs/multipathd.log" 2>&1 &)
  lk_wait_for 30 lk_multipathd_ready || lk_die "multipathd does not answer 'show daemon'"
  local conf_desc="none (compiled-in defaults)"
  [[ -e /etc/multipath.conf ]] && conf_desc=$(tr '\n\t' '  ' </etc/multipath.conf)
  lk_log "boot stack ready: udevd, iscsid, multipathd; /etc/multipath.conf: $conf_desc"
}

_lk_capture_logs() {
  dmesg >"$OUT/logs/dmesg.txt" 2>&1 || true
}

# ---------------------------------------------------------------------------------------------
# LIO targets through configfs
# ---------------------------------------------------------------------------------------------

# lk_serial_for NAME LUN: a deterministic hex-only UUID used as the backstore's unit serial.
lk_serial_for() {
  local h
  h=$(printf 'lunkeeper-vm/%s/%s' "$1" "$2" | md5sum | cut -c1-32)
  echo "${h:0:8}-${h:8:4}-${h:12:4}-${h:16:4}-${h:20:12}"
}

# lk_wwid_from_serial SERIAL: the multipath WWID LIO derives from a unit serial:
# "3" + "6001405" (NAA 6, OUI 00:14:05) + the first 25 hex digits of the serial.
lk_wwid_from_serial() {
  local hex
  hex=$(printf '%s' "$1" | tr -cd '0-9a-fA-F' | tr 'A-F' 'a-f')
  echo "36001405${hex:0:25}"
}

# lk_wwid NAME LUN: the WWID of a LUN made by lk_target.
lk_wwid() {
  cat "$LK_STATE/targets/$1/wwid.$2"
}

# lk_target_iqn NAME
lk_target_iqn() {
  cat "$LK_STATE/targets/$1/iqn"
}

_lk_size_bytes() {
  numfmt --from=iec "$1"
}

# lk_target NAME IQN [--luns "0 1 300"] [--portals "127.0.0.1:3260 127.0.0.2:3260"]
#           [--size 64M] [--chap USER PASS [--mutual USER_IN PASS_IN]] [--initiator IQN]
#           [--tpg-per-portal]
# Creates fileio backstores (sparse files in a tmpfs) with unit serials, a target, its LUNs and
# portals. Without --chap/--initiator the TPG is open (generate_node_acls=1); with them an ACL
# for the initiator (default: $LK_INITIATOR_IQN) maps every LUN, with CHAP if --chap is given.
# --tpg-per-portal makes one TPG per portal (tpgt_1, tpgt_2, ... in --portals order) so one
# path can be taken away with lk_tpg_enable / lk_portal_enable.
# Prints "NAME lun L wwid W" per LUN and remembers WWIDs for lk_wwid.
lk_target() {
  local name=$1 iqn=$2
  shift 2
  local luns="0" portals="127.0.0.1:3260 127.0.0.2:3260" size=64M
  local chap_user="" chap_pass="" mutual_user="" mutual_pass="" initiator="" per_portal=0
  while (($#)); do
    case $1 in
    --luns) luns=$2; shift 2 ;;
    --portals) portals=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --chap) chap_user=$2; chap_pass=$3; shift 3 ;;
    --mutual) mutual_user=$2; mutual_pass=$3; shift 3 ;;
    --initiator) initiator=$2; shift 2 ;;
    --tpg-per-portal) per_portal=1; shift ;;
    *) lk_die "lk_target: unknown argument $1" ;;
    esac
  done
  if [[ -n $mutual_user && -z $chap_user ]]; then
    lk_die "lk_target: --mutual needs --chap"
  fi
  if [[ -n $chap_user && -z $initiator ]]; then
    initiator=$LK_INITIATOR_IQN
  fi
  local st=$LK_STATE/targets/$name
  [[ ! -e $st ]] || lk_die "lk_target: target $name exists (lk_target_remove it first)"
  mkdir -p "$st"
  echo "$iqn" >"$st/iqn"
  local bytes
  bytes=$(_lk_size_bytes "$size")

  # Backstores.
  local lun bs serial wwid
  for lun in $luns; do
    bs=${name}_lun${lun}
    serial=$(lk_serial_for "$name" "$lun")
    wwid=$(lk_wwid_from_serial "$serial")
    truncate -s "$bytes" "$LK_BACKSTORE_DIR/$bs.img"
    mkdir -p "$LK_CFG/core/$LK_FILEIO_HBA/$bs"
    echo "fd_dev_name=$LK_BACKSTORE_DIR/$bs.img,fd_dev_size=$bytes" >"$LK_CFG/core/$LK_FILEIO_HBA/$bs/control"
    echo 1 >"$LK_CFG/core/$LK_FILEIO_HBA/$bs/enable"
    echo "$serial" >"$LK_CFG/core/$LK_FILEIO_HBA/$bs/wwn/vpd_unit_serial"
    echo "$wwid" >"$st/wwid.$lun"
    echo "$bs" >"$st/backstore.$lun"
    echo "$name lun $lun wwid $wwid serial $serial"
  done

  # TPGs: one for all portals, or one per portal.
  local -a tpg_portals=()
  if ((per_portal)); then
    local p
    for p in $portals; do tpg_portals+=("$p"); done
  else
    tpg_portals=("$portals")
  fi
  local i tpg acl p
  for i in "${!tpg_portals[@]}"; do
    tpg=$LK_CFG/iscsi/$iqn/tpgt_$((i + 1))
    mkdir -p "$tpg"
    for lun in $luns; do
      mkdir "$tpg/lun/lun_$lun"
      ln -s "$LK_CFG/core/$LK_FILEIO_HBA/$(cat "$st/backstore.$lun")" "$tpg/lun/lun_$lun/${name}_lun${lun}"
    done
    for p in ${tpg_portals[$i]}; do
      mkdir "$tpg/np/$p"
    done
    if [[ -z $initiator ]]; then
      echo 1 >"$tpg/attrib/generate_node_acls"
      echo 1 >"$tpg/attrib/cache_dynamic_acls"
      echo 0 >"$tpg/attrib/demo_mode_write_protect"
      echo 0 >"$tpg/attrib/authentication"
    else
      echo 0 >"$tpg/attrib/generate_node_acls"
      acl=$tpg/acls/$initiator
      mkdir -p "$acl"
      for lun in $luns; do
        mkdir "$acl/lun_$lun"
        ln -s "$tpg/lun/lun_$lun" "$acl/lun_$lun/mapped"
      done
      if [[ -n $chap_user ]]; then
        echo -n "$chap_user" >"$acl/auth/userid"
        echo -n "$chap_pass" >"$acl/auth/password"
        if [[ -n $mutual_user ]]; then
          echo -n "$mutual_user" >"$acl/auth/userid_mutual"
          echo -n "$mutual_pass" >"$acl/auth/password_mutual"
        fi
        echo 1 >"$tpg/attrib/authentication"
      else
        echo 0 >"$tpg/attrib/authentication"
      fi
    fi
    echo 1 >"$tpg/enable"
  done
  lk_log "target $name ($iqn): luns [$luns] portals [$portals] tpgs ${#tpg_portals[@]}${chap_user:+ chap}${mutual_user:+ mutual}${initiator:+ acl=$initiator}"
}

# lk_target_tpgs IQN: the TPG numbers of a target.
lk_target_tpgs() {
  local d
  for d in "$LK_CFG/iscsi/$1"/tpgt_*; do echo "${d##*/tpgt_}"; done
}

# lk_tpg_enable IQN 0|1 [TPGT...]: enable or disable TPGs (all of the target's by default).
# Disabling a TPG closes its sessions (the initiator sees the path fail and retries).
lk_tpg_enable() {
  local iqn=$1 val=$2
  shift 2
  local -a tpgts=("$@")
  if ((${#tpgts[@]} == 0)); then
    mapfile -t tpgts < <(lk_target_tpgs "$iqn")
  fi
  local t
  for t in "${tpgts[@]}"; do
    echo "$val" >"$LK_CFG/iscsi/$iqn/tpgt_$t/enable"
    lk_log "target $iqn tpgt_$t enable=$val"
  done
}

# lk_portal_tpg IQN PORTAL: the TPG number that holds np PORTAL.
lk_portal_tpg() {
  local d
  for d in "$LK_CFG/iscsi/$1"/tpgt_*/np/"$2"; do
    d=${d%/np/*}
    echo "${d##*/tpgt_}"
    return 0
  done
  return 1
}

# lk_portal_enable IQN PORTAL 0|1: enable/disable the TPG serving PORTAL (needs --tpg-per-portal
# for the other portals to stay up).
lk_portal_enable() {
  local t
  t=$(lk_portal_tpg "$1" "$2") || lk_die "no TPG of $1 has portal $2"
  lk_tpg_enable "$1" "$3" "$t"
}

# lk_np_remove IQN PORTAL / lk_np_add IQN PORTAL [TPGT]: take a portal away (no new logins;
# existing connections stay) or give it back.
lk_np_remove() {
  local t
  t=$(lk_portal_tpg "$1" "$2") || lk_die "no TPG of $1 has portal $2"
  rmdir "$LK_CFG/iscsi/$1/tpgt_$t/np/$2"
}
lk_np_add() {
  mkdir "$LK_CFG/iscsi/$1/tpgt_${3:-1}/np/$2"
}

# lk_target_remove NAME: delete the target and its backstores from configfs (sessions to it
# are dropped by the kernel).
lk_target_remove() {
  local name=$1 st=$LK_STATE/targets/$1 iqn tpg acl d
  iqn=$(cat "$st/iqn")
  for tpg in "$LK_CFG/iscsi/$iqn"/tpgt_*; do
    echo 0 >"$tpg/enable" || true
    for acl in "$tpg"/acls/*; do
      for d in "$acl"/lun_*; do
        rm -f "$d"/mapped
        rmdir "$d"
      done
      rmdir "$acl"
    done
    for d in "$tpg"/lun/lun_*; do
      find "$d" -maxdepth 1 -type l -delete
      rmdir "$d"
    done
    for d in "$tpg"/np/*; do rmdir "$d"; done
    rmdir "$tpg"
  done
  rmdir "$LK_CFG/iscsi/$iqn"
  local f
  for f in "$st"/backstore.*; do
    rmdir "$LK_CFG/core/$LK_FILEIO_HBA/$(cat "$f")"
    rm -f "$LK_BACKSTORE_DIR/$(cat "$f").img"
  done
  rm -rf "$st"
  lk_log "target $name ($iqn) removed"
}

# ---------------------------------------------------------------------------------------------
# Initiator-side sysfs helpers (read sysfs, never parse iscsiadm output)
# ---------------------------------------------------------------------------------------------

# lk_sessions [IQN]: session ids ("3" for session3), sorted, optionally of one target.
lk_sessions() {
  local s
  for s in /sys/class/iscsi_session/session*; do
    if [[ -z ${1:-} || "$(cat "$s/targetname")" == "$1" ]]; then
      echo "${s##*/session}"
    fi
  done | sort -n
}

# lk_session_portal SID: "ip:port" the session logged in to (persistent address).
lk_session_portal() {
  local c
  for c in /sys/class/iscsi_connection/connection"$1":*; do
    echo "$(cat "$c/persistent_address"):$(cat "$c/persistent_port")"
    return 0
  done
  return 1
}

# lk_session_for IQN PORTAL: the session id logged in to PORTAL of IQN.
lk_session_for() {
  local s
  for s in $(lk_sessions "$1"); do
    if [[ "$(lk_session_portal "$s")" == "$2" ]]; then
      echo "$s"
      return 0
    fi
  done
  return 1
}

lk_session_state() {
  cat "/sys/class/iscsi_session/session$1/state"
}

# lk_session_host SID: the SCSI host number H (from /sys/devices/platform/hostH/sessionN).
lk_session_host() {
  local dev
  dev=$(readlink -f "/sys/class/iscsi_session/session$1/device")
  dev=${dev%/*}
  echo "${dev##*/host}"
}

# lk_host_devices H: the H:C:T:L names of the SCSI devices on host H, sorted.
lk_host_devices() {
  local d
  for d in /sys/class/scsi_device/"$1":*; do echo "${d##*/}"; done | sort -t: -k4n
}

# lk_hctl_disk HCTL: the sdX of a SCSI device (whole disk).
lk_hctl_disk() {
  local b
  for b in /sys/class/scsi_device/"$1"/device/block/*; do
    echo "${b##*/}"
    return 0
  done
  return 1
}

# lk_scan HOST "C T L": a targeted scan (synchronous in the kernel).
lk_scan() {
  echo "$2" >"/sys/class/scsi_host/host$1/scan"
}

# lk_disks_of_wwid WWID: sdX devices whose /sys/block/sdX/device/wwid maps to WWID.
lk_disks_of_wwid() {
  local b w
  for b in /sys/block/sd*; do
    w=$(cat "$b/device/wwid" 2>/dev/null) || continue
    [[ "$(lk_wwid_from_sysfs "$w")" == "$1" ]] && echo "${b##*/}"
  done
  return 0
}

# lk_wwid_from_sysfs "naa.6001..." -> "36001..." (type digit: naa 3, eui 2, t10 1, other 8).
lk_wwid_from_sysfs() {
  local w=$1
  case $w in
  naa.*) echo "3${w#naa.}" ;;
  eui.*) echo "2${w#eui.}" ;;
  t10.*) echo "1${w#t10.}" ;;
  *) echo "8$w" ;;
  esac
}

# lk_disk_wwid sdX: the multipath-form WWID of a disk, from /sys/block/sdX/device/wwid.
lk_disk_wwid() {
  lk_wwid_from_sysfs "$(cat "/sys/block/$1/device/wwid")"
}

# lk_check_wwid NAME LUN sdX: check that the disk's sysfs WWID is the one lk_target computed.
lk_check_wwid() {
  lk_check_eq "$3 (target $1 LUN $2) has the computed WWID $(lk_wwid "$1" "$2")" \
    "$(lk_wwid "$1" "$2")" "$(lk_disk_wwid "$3" 2>&1)"
}

# lk_dm_of_wwid WWID: dm-N whose dm/uuid is mpath-WWID.
lk_dm_of_wwid() {
  local d
  for d in /sys/block/dm-*; do
    if [[ "$(cat "$d/dm/uuid")" == "mpath-$1" ]]; then
      echo "${d##*/}"
      return 0
    fi
  done
  return 1
}

# lk_dm_slaves dm-N: its slaves, sorted, space separated.
lk_dm_slaves() {
  local s out=()
  for s in /sys/block/"$1"/slaves/*; do out+=("${s##*/}"); done
  echo "${out[*]}"
}

# lk_map_has_paths WWID N: the map exists and has N slaves.
lk_map_has_paths() {
  local dm slaves
  dm=$(lk_dm_of_wwid "$1") || return 1
  slaves=$(lk_dm_slaves "$dm")
  [[ -e /dev/mapper/$1 ]] && (($(wc -w <<<"$slaves") == $2))
}

# lk_mpathd CMD...: one multipathd socket command through the CLI; prints the reply.
lk_mpathd() {
  timeout 20 multipathd "$@"
}

# ---------------------------------------------------------------------------------------------
# Checksummed I/O across a fault (tests/vm/lk-io.py)
# ---------------------------------------------------------------------------------------------

_lk_io_dir() { echo "$LK_STATE/io/$1"; }

# lk_io_start NAME DEV [SLOTS]: start writing checksummed 4 KiB blocks (O_DIRECT, fsync each)
# to DEV in the background, cycling over SLOTS blocks (default 512 = 2 MiB: reading them all back
# stays quick in an emulated guest), until lk_io_stop.
lk_io_start() {
  local d
  d=$(_lk_io_dir "$1")
  rm -rf "$d"
  mkdir -p "$d"
  echo "$2" >"$d/dev"
  python3 "$LK_VM_DIR/lk-io.py" write "$2" "$d" "${3:-512}" >"$d/writer.log" 2>&1 &
  echo $! >"$d/pid"
  lk_log "io $1: writer $(cat "$d/pid") started on $2"
}

# lk_io_acked NAME: writes acknowledged so far (from the writer's progress file, ~1 s old).
lk_io_acked() {
  local f
  f=$(_lk_io_dir "$1")/progress
  if [[ -s $f ]]; then cut -d' ' -f1 "$f"; else echo 0; fi
}

# lk_io_errors NAME: I/O errors so far (progress file while running, acks.json once stopped).
lk_io_errors() {
  local d
  d=$(_lk_io_dir "$1")
  if [[ -s $d/acks.json ]]; then
    python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["errors"]))' "$d/acks.json"
  elif [[ -s $d/progress ]]; then
    cut -d' ' -f2 "$d/progress"
  else
    echo 0
  fi
}

# lk_io_stop NAME: ask the writer to stop and wait (up to 120 s: a write may be queued in a
# map with no path) until it has written acks.json.
lk_io_stop() {
  local d pid
  d=$(_lk_io_dir "$1")
  pid=$(cat "$d/pid")
  touch "$d/stop"
  lk_wait_for 120 test -s "$d/acks.json" || { lk_log "io $1: writer $pid did not stop"; return 1; }
  wait "$pid" 2>/dev/null || true
  lk_log "io $1: writer stopped: $(cat "$d/writer.log" 2>/dev/null)"
}

# lk_io_verify NAME: read back every slot the writer acknowledged and check sequence numbers and
# checksums; prints the figures; fails if an acknowledged write is lost or a block is corrupt.
lk_io_verify() {
  local d
  d=$(_lk_io_dir "$1")
  python3 "$LK_VM_DIR/lk-io.py" verify "$(cat "$d/dev")" "$d"
}

# ---------------------------------------------------------------------------------------------
# State dumps and cleanup
# ---------------------------------------------------------------------------------------------

# lk_dump_state LABEL: a snapshot of everything useful for debugging in $OUT/state-LABEL.txt.
lk_dump_state() {
  local f=$OUT/state-${1:-dump}.txt c
  {
    for c in "iscsiadm -m session -P 3" "iscsiadm -m node" "lsscsi -g" "multipath -ll" \
      "multipathd show maps" "multipathd show paths" "multipathd show status" \
      "dmsetup ls" "dmsetup table" "dmsetup info -c" \
      "ls -l /sys/class/iscsi_session /sys/class/iscsi_host /sys/class/scsi_device /sys/block" \
      "cat /etc/multipath/wwids" "find /etc/iscsi/nodes /etc/iscsi/send_targets" \
      "find $LK_CFG/iscsi -maxdepth 4" "ls -l $LK_CFG/core/$LK_FILEIO_HBA" "dmesg"; do
      echo "===== $c"
      timeout 20 bash -c "$c" 2>&1 || echo "[exit $?]"
    done
  } >"$f" 2>&1
  lk_log "state dumped to $f"
}

# lk_cleanup_all: remove every multipath map, delete every SCSI disk of an iSCSI session, log
# out every session, delete every node/discovery record and empty the wwids file. Waits until
# nothing is left (bounded); returns non-zero if something is.
lk_cleanup_all() {
  local dm name s d h rc=0
  for dm in /sys/block/dm-*; do
    [[ "$(cat "$dm/dm/uuid")" == mpath-* ]] || continue
    name=$(cat "$dm/dm/name")
    lk_mpathd disablequeueing map "$name" >/dev/null 2>&1 || true
    lk_mpathd del map "$name" >/dev/null 2>&1 || true
    if [[ -e /dev/mapper/$name ]]; then
      multipath -f "$name" >/dev/null 2>&1 || dmsetup remove --force "$name" >/dev/null 2>&1 || true
    fi
  done
  # Delete the disks of live sessions (a delete on a blocked device of a FAILED session can
  # hang until replacement_timeout; the logout below removes those instead).
  for s in $(lk_sessions); do
    [[ "$(lk_session_state "$s")" == LOGGED_IN ]] || continue
    h=$(lk_session_host "$s")
    for d in /sys/class/scsi_device/"$h":*; do
      echo 1 >"$d/device/delete" || true
    done
  done
  timeout 60 iscsiadm -m node --logoutall=all >/dev/null 2>&1 || true
  for s in $(lk_sessions); do # sessions without a record
    timeout 60 iscsiadm -m session -r "$s" --logout >/dev/null 2>&1 || true
  done
  timeout 30 iscsiadm -m node -o delete >/dev/null 2>&1 || true
  rm -rf /etc/iscsi/nodes/* /etc/iscsi/send_targets/*
  multipath -W >/dev/null 2>&1 || true
  : >/etc/multipath/wwids
  lk_wait_for 60 _lk_nothing_left || rc=1
  udevadm settle --timeout=30 || true
  if ((rc)); then
    lk_log "cleanup: something is left"
    lk_dump_state cleanup-left || true
  else
    lk_log "cleanup: no sessions, disks, maps or records left"
  fi
  return "$rc"
}

_lk_nothing_left() {
  local x
  for x in /sys/class/iscsi_session/session* /sys/block/sd* /dev/mapper/3*; do return 1; done
  for x in /sys/block/dm-*; do
    [[ "$(cat "$x/dm/uuid")" == mpath-* ]] && return 1
  done
  return 0
}
