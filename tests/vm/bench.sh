#!/usr/bin/env bash
# Contender benchmark (issue 4), run inside the VM by tests/bench.sh:
#
#   tests/vm/vm.sh tests/vm/bench.sh [--rounds N] [--topologies "T1 T2"]
#       [--contenders "lunkeeper os-brick iscsiadm-script floor"] [--t1-volumes N]
#       [--t2-luns N] [--idle-secs N]
#
# Topologies (LIO in this VM, every LUN on 2 portals, one TPG):
#   T1: N volumes (default 32), each its own target exporting LUN 0 → 2N sessions, N maps;
#   T2: one target exporting N LUNs (default 64) → 2 sessions, 2N paths, N maps.
# For each topology, each round runs every contender in turn (A B C D A B C D ...): attach
# from nothing to every map usable, then detach back to nothing. "Usable" is the same for all
# and checked here, not by the contender: /dev/mapper/<wwid> exists and a 4 KiB O_DIRECT read
# of it succeeds. Attach time runs from the contender's start to the last map found usable.
# After each detach this script records what the contender left behind (sessions, SCSI disks,
# maps, node and discovery records, wwids entries), then cleans up for the next run.
# Then, with T1 attached under `lunkeeper run`, it samples the daemon's idle cost.
#
# multipathd runs with `find_multipaths no` for every contender: the floor and the plain
# script rely on it (they never register WWIDs); os-brick and lunkeeper work either way.
#
# Output in $OUT: runs.jsonl (one JSON object per measured phase), idle.json, bench.log.
# tests/vm/bench/report.py turns them into the markdown table and bench.json.
LK_MPATHD_VERBOSITY=${LK_MPATHD_VERBOSITY:-1}
LK_UDEV_MONITOR=${LK_UDEV_MONITOR:-0}
. "$(dirname "${BASH_SOURCE[0]}")/guest-lib.sh"

LK=${LUNKEEPER_BIN:?}
BENCH_DIR=$LK_VM_DIR/bench
OSBRICK_PY=${OSBRICK_PY:-/opt/lunkeeper-osbrick/bin/python3}
ROUNDS=3
TOPOLOGIES="T1 T2"
CONTENDERS="lunkeeper os-brick iscsiadm-script floor"
T1_VOLUMES=32
T2_LUNS=64
IDLE_SECS=60
while (($#)); do
  case $1 in
  --rounds) ROUNDS=$2; shift 2 ;;
  --topologies) TOPOLOGIES=$2; shift 2 ;;
  --contenders) CONTENDERS=$2; shift 2 ;;
  --t1-volumes) T1_VOLUMES=$2; shift 2 ;;
  --t2-luns) T2_LUNS=$2; shift 2 ;;
  --idle-secs) IDLE_SECS=$2; shift 2 ;;
  *) lk_die "bench.sh: unknown argument $1" ;;
  esac
done

P1=127.0.0.1:3260
P2=127.0.0.2:3260
W=/run/lunkeeper-bench
CONF=$W/volumes.toml
VOLS=$W/volumes.txt # "<name> <iqn> <lun> <portal> <portal>" per volume
RUNS=$OUT/runs.jsonl
mkdir -p "$W"
: >"$RUNS"

declare -a V_NAME=() V_IQN=() V_LUN=() V_WWID=() TARGETS=()

# ---------------------------------------------------------------------------------------------
# Topologies
# ---------------------------------------------------------------------------------------------

topology_up() { # T1|T2
  V_NAME=() V_IQN=() V_LUN=() V_WWID=() TARGETS=()
  local i
  case $1 in
  T1)
    for ((i = 0; i < T1_VOLUMES; i++)); do
      lk_target "t1-$i" "iqn.2026-11.test.lunkeeper:t1-$i" --luns 0 --portals "$P1 $P2" --size 16M >/dev/null
      TARGETS+=("t1-$i")
      V_NAME+=("t1-$i") V_IQN+=("iqn.2026-11.test.lunkeeper:t1-$i") V_LUN+=(0) V_WWID+=("$(lk_wwid "t1-$i" 0)")
    done
    ;;
  T2)
    local luns
    luns=$(seq -s ' ' 0 $((T2_LUNS - 1)))
    lk_target t2 iqn.2026-11.test.lunkeeper:t2 --luns "$luns" --portals "$P1 $P2" --size 16M >/dev/null
    TARGETS+=(t2)
    for ((i = 0; i < T2_LUNS; i++)); do
      V_NAME+=("t2-$i") V_IQN+=(iqn.2026-11.test.lunkeeper:t2) V_LUN+=("$i") V_WWID+=("$(lk_wwid t2 "$i")")
    done
    ;;
  *) lk_die "unknown topology $1" ;;
  esac
  : >"$VOLS"
  for i in "${!V_NAME[@]}"; do
    echo "${V_NAME[$i]} ${V_IQN[$i]} ${V_LUN[$i]} $P1 $P2" >>"$VOLS"
  done
  lk_log "topology $1: ${#V_NAME[@]} volumes on ${#TARGETS[@]} targets"
}

topology_down() {
  local t
  for t in "${TARGETS[@]}"; do lk_target_remove "$t"; done
}

lunkeeper_config() { # present|absent
  local i
  {
    printf '[defaults]\nmultipath = true\n\n'
    for i in "${!V_NAME[@]}"; do
      printf '[[volume]]\nname = "%s"\ntarget = "%s"\nportals = ["%s", "%s"]\nlun = %s\nstate = "%s"\n\n' \
        "${V_NAME[$i]}" "${V_IQN[$i]}" "$P1" "$P2" "${V_LUN[$i]}" "$1"
    done
  } >"$CONF.tmp"
  mv "$CONF.tmp" "$CONF"
}

# ---------------------------------------------------------------------------------------------
# What "usable" and "nothing left" mean, for every contender alike
# ---------------------------------------------------------------------------------------------

declare -A USABLE=()
# all_usable: every map exists and answers a 4 KiB O_DIRECT read (each map is read once).
all_usable() {
  local w
  for w in "${V_WWID[@]}"; do
    [[ -n ${USABLE[$w]:-} ]] && continue
    [[ -b /dev/mapper/$w ]] || return 1
    dd if="/dev/mapper/$w" of=/dev/null bs=4k count=1 iflag=direct status=none 2>/dev/null || return 1
    USABLE[$w]=1
  done
}

# min_paths: the fewest slaves any of the topology's maps has.
min_paths() {
  local w dm n min=999
  for w in "${V_WWID[@]}"; do
    dm=$(readlink -f "/dev/mapper/$w") || { min=0; continue; }
    n=0
    for _ in /sys/block/"${dm##*/}"/slaves/*; do n=$((n + 1)); done
    ((n < min)) && min=$n
  done
  echo "$min"
}

# leftovers: what is on the host beyond an empty initiator (one word per kind, with counts).
leftovers() {
  local n_s=0 n_d=0 n_m=0 n_r=0 n_st=0 n_w=0 x
  for x in /sys/class/iscsi_session/session*; do n_s=$((n_s + 1)); done
  for x in /sys/block/sd*; do n_d=$((n_d + 1)); done
  for x in /sys/block/dm-*; do [[ "$(cat "$x/dm/uuid")" == mpath-* ]] && n_m=$((n_m + 1)); done
  n_r=$(find /etc/iscsi/nodes -mindepth 2 -maxdepth 2 2>/dev/null | wc -l)
  n_st=$(find /etc/iscsi/send_targets -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
  [[ -f /etc/multipath/wwids ]] && n_w=$(grep -c '^/' /etc/multipath/wwids || true)
  local out=""
  ((n_s)) && out+="sessions=$n_s "
  ((n_d)) && out+="disks=$n_d "
  ((n_m)) && out+="maps=$n_m "
  ((n_r)) && out+="node_records=$n_r "
  ((n_st)) && out+="discovery_records=$n_st "
  ((n_w)) && out+="wwids=$n_w "
  echo "${out% }"
}

nothing_mapped() {
  local x
  for x in /sys/class/iscsi_session/session* /sys/block/sd*; do return 1; done
  for x in /sys/block/dm-*; do [[ "$(cat "$x/dm/uuid")" == mpath-* ]] && return 1; done
  return 0
}

# record TOPOLOGY ROUND CONTENDER PHASE MS OK [EXTRA_JSON_FIELDS]
record() {
  printf '{"topology":"%s","round":%s,"contender":"%s","phase":"%s","seconds":%s,"ok":%s%s}\n' \
    "$1" "$2" "$3" "$4" "$(printf '%d.%03d' $(($5 / 1000)) $(($5 % 1000)))" "$6" "${7:-}" >>"$RUNS"
  lk_log "RESULT $1 round $2 $3 $4: $(printf '%d.%03d' $(($5 / 1000)) $(($5 % 1000))) s ok=$6 ${7:-}"
}

# ---------------------------------------------------------------------------------------------
# Contenders: each *_attach / *_detach returns when its own work is done; the caller then waits
# for the common end condition. $LOGP is a log file prefix for this run.
# ---------------------------------------------------------------------------------------------

lunkeeper_prepare() { lunkeeper_config present; }
# GNU time's line (CPU of lunkeeper and the commands it ran) goes to the end of the log.
LK_TIME=(/usr/bin/time -f 'time: wall %e s, user %U s, system %S s, max RSS %M KiB')
lunkeeper_attach() {
  timeout 900 "${LK_TIME[@]}" "$LK" --config "$CONF" apply --timeout 600 >"$LOGP.attach.log" 2>&1
}
lunkeeper_detach_prepare() { lunkeeper_config absent; }
lunkeeper_detach() {
  timeout 900 "${LK_TIME[@]}" "$LK" --config "$CONF" apply --timeout 600 >"$LOGP.detach.log" 2>&1
}

os-brick_prepare() { :; }
os-brick_attach() {
  timeout 1800 "$OSBRICK_PY" "$BENCH_DIR/osbrick.py" connect "$VOLS" "$W/osbrick-state.json" >"$LOGP.attach.log" 2>&1
}
os-brick_detach_prepare() { :; }
os-brick_detach() {
  timeout 1800 "$OSBRICK_PY" "$BENCH_DIR/osbrick.py" disconnect "$VOLS" "$W/osbrick-state.json" >"$LOGP.detach.log" 2>&1
}

iscsiadm-script_prepare() { :; }
iscsiadm-script_attach() {
  timeout 1800 bash "$BENCH_DIR/iscsiadm-script.sh" attach "$VOLS" >"$LOGP.attach.log" 2>&1
}
iscsiadm-script_detach_prepare() { :; }
iscsiadm-script_detach() {
  timeout 1800 bash "$BENCH_DIR/iscsiadm-script.sh" detach "$VOLS" >"$LOGP.detach.log" 2>&1
}

# The floor: records exist beforehand (default settings: scan = auto), one loginall, the kernel
# scans, multipathd (find_multipaths no) builds the maps; teardown is one logoutall.
floor_prepare() {
  local iqn p1 p2 p
  while read -r _ iqn _ p1 p2; do
    for p in $p1 $p2; do
      [[ -e /etc/iscsi/nodes/$iqn ]] && [[ -n $(find "/etc/iscsi/nodes/$iqn" -name "${p/:/,}*" -print -quit) ]] && continue
      iscsiadm -m node -T "$iqn" -p "$p" -o new >/dev/null
    done
  done <"$VOLS"
}
floor_attach() {
  timeout 900 iscsiadm -m node --loginall=all >"$LOGP.attach.log" 2>&1
}
floor_detach_prepare() { :; }
floor_detach() {
  timeout 900 iscsiadm -m node --logoutall=all >"$LOGP.detach.log" 2>&1
}

# run_one TOPOLOGY ROUND CONTENDER
run_one() {
  local topo=$1 round=$2 c=$3 t0 t1 rc ok ms start_ms left paths
  LOGP=$OUT/runs/$topo-r$round-$c
  mkdir -p "$OUT/runs"
  USABLE=()
  "${c}_prepare"
  sync
  t0=$(_lk_now_ms)
  lk_log "attach starts at epoch ms $t0"
  rc=0
  "${c}_attach" || rc=$?
  ok=false
  if lk_wait_for 300 all_usable; then ok=true; fi
  t1=$(_lk_now_ms)
  # os-brick's own clock starts after its imports.
  start_ms=$(awk '/^start_ms/ {print $2; exit}' "$LOGP.attach.log" 2>/dev/null || true)
  [[ -n $start_ms ]] && t0=$start_ms
  ms=$((t1 - t0))
  paths=$(min_paths)
  record "$topo" "$round" "$c" attach "$ms" "$ok" ",\"exit\":$rc,\"min_paths\":$paths"
  [[ $c != lunkeeper ]] || lk_check_eq "$topo r$round lunkeeper attach: every map usable, apply exit 0" "true 0" "$ok $rc"

  "${c}_detach_prepare"
  t0=$(_lk_now_ms)
  rc=0
  "${c}_detach" || rc=$?
  ok=false
  if lk_wait_for 300 nothing_mapped; then ok=true; fi
  t1=$(_lk_now_ms)
  start_ms=$(awk '/^start_ms/ {print $2; exit}' "$LOGP.detach.log" 2>/dev/null || true)
  [[ -n $start_ms ]] && t0=$start_ms
  ms=$((t1 - t0))
  left=$(leftovers)
  # The floor keeps its records by design (they were made before the clock started).
  record "$topo" "$round" "$c" detach "$ms" "$ok" ",\"exit\":$rc,\"left\":\"$left\""
  if [[ $c == lunkeeper ]]; then
    lk_check_eq "$topo r$round lunkeeper detach: apply exit 0, nothing left" "true 0 " "$ok $rc $left"
  fi
  if [[ -n $left ]]; then
    lk_log "$c left behind: $left; cleaning up"
    # The others' leftovers are expected (see the report); a dump costs ~10 s under emulation.
    [[ $c != lunkeeper ]] || lk_dump_state "left-$topo-r$round-$c" || true
  fi
  lk_cleanup_all >/dev/null 2>&1 || lk_log "cleanup after $c: something is still left"
  rm -rf /var/lib/lunkeeper /run/lunkeeper "$W/osbrick-state.json"
  lk_check "$topo r$round $c: host empty before the next run" nothing_mapped
}

# ---------------------------------------------------------------------------------------------
# Idle cost of the daemon with T1 attached
# ---------------------------------------------------------------------------------------------

daemon_all_ready() {
  python3 -c "
import json, sys
s = json.load(open('/run/lunkeeper/status.json'))
sys.exit(0 if len(s['volumes']) == $1 and all(v['state'] == 'ready' for v in s['volumes']) else 1)" 2>/dev/null
}

idle_cost() {
  lunkeeper_config present
  LUNKEEPER_LOG=info "$LK" --config "$CONF" run >"$OUT/runs/idle-daemon.log" 2>&1 &
  local dpid=$! n=${#V_NAME[@]}
  local t0
  t0=$(_lk_now_ms)
  lk_check_wait "idle: the daemon brings T1 ($n volumes) to ready" 600 daemon_all_ready "$n"
  lk_log "idle: daemon ready after $(($(_lk_now_ms) - t0)) ms; letting the follow-up looks end"
  sleep 5 # not a synchronisation: the 2 s of follow-up looks after the last event must end
  python3 "$BENCH_DIR/idle.py" "$dpid" "$IDLE_SECS" "$n" >"$OUT/idle.json"
  lk_log "idle: $(cat "$OUT/idle.json")"
  kill -TERM "$dpid"
  wait "$dpid" || true
  lunkeeper_config absent
  timeout 900 "$LK" --config "$CONF" apply --timeout 600 >"$OUT/runs/idle-detach.log" 2>&1 || true
  lk_cleanup_all >/dev/null 2>&1 || true
  rm -rf /var/lib/lunkeeper /run/lunkeeper
}

# ---------------------------------------------------------------------------------------------

mkdir -p "$OUT/runs"
lk_boot_stack --find-multipaths no
{
  echo "kernel $(uname -r); $(nproc) vCPUs (TCG); $(iscsiadm --version); multipath-tools $(multipath -h 2>&1 | awk 'NR==1 {print $2}')"
  # From the dist-info name: importing anything in Python costs seconds under emulation.
  dists=("${OSBRICK_PY%/bin/*}"/lib/python3*/site-packages/os_brick-*.dist-info)
  brick=${dists[0]:-missing}
  brick=${brick##*/os_brick-}
  echo "os-brick ${brick%.dist-info}"
  echo "$("$LK" --version 2>/dev/null || echo 'lunkeeper ?') ($(basename "$LK"))"
} >"$OUT/versions.txt"
lk_log "versions: $(tr '\n' ';' <"$OUT/versions.txt")"

for topo in $TOPOLOGIES; do
  topology_up "$topo"
  for ((round = 1; round <= ROUNDS; round++)); do
    for c in $CONTENDERS; do
      lk_log "=== $topo round $round: $c"
      run_one "$topo" "$round" "$c"
    done
  done
  if [[ $topo == T1 && $IDLE_SECS -gt 0 ]]; then
    idle_cost
  fi
  topology_down
done
lk_finish
