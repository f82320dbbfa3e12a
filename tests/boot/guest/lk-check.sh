#!/bin/bash
# lk-check.sh (in the guest, run by lk-check.service after multi-user.target): the checks of one
# boot of tests/boot/boot.sh, then power off. Which checks run depends on the boot number
# (/var/lib/lk-boot/boot-count, incremented here). Results go to /var/lib/lk-boot/results/
# boot-N ("PASS name" / "FAIL name: details" lines) and boot-N.done when the script got to the
# end; the host reads them from the disk after the VM has powered off. Longer outputs (journal,
# systemd-analyze) go to /var/lib/lk-boot/results/boot-N.*.
set -uo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8

STATE=/var/lib/lk-boot
RES=$STATE/results
mkdir -p "$RES"
n=$(($(cat "$STATE/boot-count" 2>/dev/null || echo 0) + 1))
echo "$n" >"$STATE/boot-count"
sync
OUT=$RES/boot-$n
: >"$OUT"
MNT=/mnt/vol0
CONF=/etc/lunkeeper/volumes.toml
U=lunkeeper.service

log() { echo "[lk-check boot $n] $*"; }
pass() { echo "PASS $1" >>"$OUT"; log "PASS $1"; }
fail() { echo "FAIL $1: $2" >>"$OUT"; log "FAIL $1: $2"; }
# check NAME CMD...: PASS if CMD exits 0; FAIL with the tail of its output otherwise.
check() {
  local name=$1 out rc=0
  shift
  out=$("$@" 2>&1) || rc=$?
  if ((rc == 0)); then pass "$name"; else fail "$name" "exit $rc: $(tail -n 5 <<<"$out" | tr '\n' ' ' | cut -c1-300)"; fi
}
# wait_for SECS CMD...: poll every 0.2 s.
wait_for() {
  local end=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS >= end)) && return 1
    sleep 0.2
  done
}
volumes() { sed -n 's/^name = "\(.*\)"$/\1/p' "$CONF"; }
# sessions: "sessionN target portal" per iSCSI session, sorted: the identity used for churn checks.
sessions() {
  local s c
  for s in /sys/class/iscsi_session/session*; do
    for c in /sys/class/iscsi_connection/connection"${s##*session}":*; do
      echo "${s##*/} $(cat "$s/targetname") $(cat "$c/persistent_address"):$(cat "$c/persistent_port")"
    done
  done | sort
}
maps() { # multipath maps: "name uuid slaves"
  local d
  for d in /sys/block/dm-*; do
    [[ $(cat "$d/dm/uuid") == mpath-* ]] || continue
    echo "$(cat "$d/dm/name") $(ls "$d/slaves" | tr '\n' ' ')"
  done | sort
}
links_ok() { # every volume in the file has a usable /dev/lunkeeper/NAME
  local v
  for v in $(volumes); do
    [[ -b /dev/lunkeeper/$v ]] || { echo "no /dev/lunkeeper/$v"; return 1; }
    dd if="/dev/lunkeeper/$v" of=/dev/null bs=4k count=1 iflag=direct status=none || return 1
  done
}
mono() { systemctl show -p "$2" --value "$1"; } # UNIT PROPERTY
main_pid() { systemctl show -p MainPID --value "$U"; }
nrestarts() { systemctl show -p NRestarts --value "$U"; }
same() { # LABEL BEFORE AFTER
  if [[ $2 == "$3" ]]; then return 0; fi
  echo "$1 changed: before [$(tr '\n' ';' <<<"$2")] after [$(tr '\n' ';' <<<"$3")]"
  return 1
}
# write_file PATH BYTES SYNC(1|0): random data; its sha256 is recorded on the root disk.
write_file() {
  python3 - "$1" "$2" "$3" <<'PY'
import hashlib, os, sys
path, size, sync = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
data = os.urandom(size)
with open(path + ".tmp", "wb") as f:
    f.write(data)
    if sync:
        f.flush(); os.fsync(f.fileno())
os.rename(path + ".tmp", path)
if sync:
    d = os.open(os.path.dirname(path), os.O_RDONLY); os.fsync(d); os.close(d)
print(hashlib.sha256(data).hexdigest())
PY
}
record_sum() { # NAME SUM: expected checksum for the next boot, durable on the root disk
  echo "$2" >"$STATE/expect.$1.tmp" && sync "$STATE/expect.$1.tmp" && mv "$STATE/expect.$1.tmp" "$STATE/expect.$1" && sync "$STATE"
}
verify_sum() { # NAME: the file written last boot has the recorded checksum
  local want got
  want=$(cat "$STATE/expect.$1") || { echo "nothing recorded for $1"; return 1; }
  got=$(sha256sum "$MNT/$1" | cut -d' ' -f1) || return 1
  [[ $want == "$got" ]] || { echo "$1: sha256 $got, expected $want"; return 1; }
}

# journal_history VOLUME OTHER: `journalctl -u lunkeeper VOLUME=<name>` (this boot) is that
# volume's history: every entry carries VOLUME=<name> (a session's entries carry one VOLUME per
# volume they serve), it has its login (ACTION=login RESULT=changed, the shared session's) and
# actions of the volume's own (VOLUME=<name> alone: its scan, its name, its map or paths), no
# WWID but its own, and none of the other volume's own entries.
journal_history() {
  local v=$1 other=$2 dm wwid
  dm=$(basename "$(readlink -f "/dev/lunkeeper/$v")")
  wwid=$(cat "/sys/block/$dm/dm/uuid") || return 1
  wwid=${wwid#mpath-}
  journalctl -b -u "$U" "VOLUME=$v" -o json --no-pager >"$OUT.journal-$v.json" 2>&1 || return 1
  journalctl -b -u "$U" "VOLUME=$other" -o json --no-pager >"$OUT.journal-$other.json" 2>&1 || return 1
  python3 - "$v" "$wwid" "$OUT.journal-$v.json" "$OUT.journal-$other.json" <<'PY'
import json, sys
v, wwid, mine, theirs = sys.argv[1:]
def load(path):
    return [json.loads(l) for l in open(path) if l.startswith("{")]
def vals(e, k):
    x = e.get(k)
    return [] if x is None else x if isinstance(x, list) else [x]
entries = load(mine)
acts = sorted({f"{a}/{r}" for e in entries for a in vals(e, "ACTION") for r in vals(e, "RESULT")})
print(f"{len(entries)} entries with VOLUME={v}; ACTION/RESULT: {' '.join(acts)}")
problems = []
if not entries:
    problems.append("no entry")
alien = [e.get("MESSAGE") for e in entries if v not in vals(e, "VOLUME")]
if alien:
    problems.append(f"{len(alien)} entries without VOLUME={v}, e.g. {alien[0]!r}")
if "login/changed" not in acts:
    problems.append("no ACTION=login RESULT=changed")
own = sorted({a for e in entries if vals(e, "VOLUME") == [v] for a in vals(e, "ACTION")})
print(f"its own actions: {' '.join(own)}")
if not own:
    problems.append(f"no action of {v}'s own")
wwids = {w for e in entries for w in vals(e, "WWID")}
if wwids - {wwid}:
    problems.append(f"other volumes' WWIDs: {sorted(wwids - {wwid})}")
# The other volume's own entries (its WWID, not a shared session's) stay out of this history.
theirs_only = [e for e in load(theirs) if v not in vals(e, "VOLUME")]
print(f"{len(theirs_only)} entries of the other volume alone, none of them in {v}'s history")
if not theirs_only:
    problems.append("the other volume has no entry of its own (nothing to tell apart)")
if problems:
    print("; ".join(problems))
    sys.exit(1)
PY
}

# metrics_show "SERIES VALUE"...: node_exporter's /metrics (Debian's prometheus-node-exporter,
# its textfile collector reading lunkeeper's file) shows each series with that value (">=N": at
# least N). Labels are compared as a set: node_exporter re-orders them.
metrics_show() {
  python3 - "$OUT.metrics" "$@" <<'PY'
import re, sys, urllib.request
save, wants = sys.argv[1], sys.argv[2:]
try:
    text = urllib.request.urlopen("http://127.0.0.1:9100/metrics", timeout=20).read().decode()
except Exception as e:
    print(f"cannot fetch http://127.0.0.1:9100/metrics: {e}")
    sys.exit(1)
def key(series):
    m = re.fullmatch(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?', series)
    if not m:
        return series
    labels = tuple(sorted(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2) or "")))
    return (m.group(1), labels)
have = {}
for line in text.splitlines():
    if line and not line.startswith("#"):
        series, _, value = line.rpartition(" ")
        have[key(series)] = value
ours = [l for l in text.splitlines() if l.startswith("lunkeeper_")]
with open(save, "w") as f:
    f.write("\n".join(ours) + "\n")
bad = []
for want in wants:
    series, _, value = want.rpartition(" ")
    got = have.get(key(series))
    at_least = value.startswith(">=")
    want_value = float(value[2:] if at_least else value)
    if got is None or (float(got) < want_value if at_least else float(got) != want_value):
        bad.append(f"{series} = {got} (want {value})")
print(f"{len(ours)} lunkeeper_ series")
if bad:
    print("; ".join(bad))
    sys.exit(1)
PY
}
# expected_metrics [RELOADS]: what the file's volumes should show, all ready on both portals
# with the 64 MiB LUN size, the file accepted and the collector reading it without error.
expected_metrics() {
  local v
  echo 'node_textfile_scrape_error 0'
  echo "lunkeeper_volumes{state=\"ready\"} $(volumes | wc -l)"
  for s in degraded pending failed blocked; do echo "lunkeeper_volumes{state=\"$s\"} 0"; done
  echo 'lunkeeper_config_ok 1'
  for v in $(volumes); do
    echo "lunkeeper_volume_state{volume=\"$v\",state=\"ready\"} 1"
    echo "lunkeeper_volume_paths{volume=\"$v\",state=\"active\"} 2"
    echo "lunkeeper_volume_paths{volume=\"$v\",state=\"down\"} 0"
    echo "lunkeeper_volume_size_bytes{volume=\"$v\"} $((64 * 1024 * 1024))"
  done
}
metrics_as_expected() { # extra "SERIES VALUE" lines beyond expected_metrics
  local -a want
  mapfile -t want < <(expected_metrics; (($#)) && printf '%s\n' "$@")
  # The file is rewritten when a value changes; give the last change a moment to land.
  wait_for 60 metrics_show "${want[@]}"
  metrics_show "${want[@]}"
}

log "start"
journalctl -b -o short-monotonic --no-pager >"$OUT.journal-at-start" 2>&1

# ---- every boot: attached before remote-fs-pre.target, mounted from fstab --------------------
# From the journal's ordering: lunkeeper's "ready" line (sent with READY=1) and systemd's
# "Started lunkeeper.service" come before "Reached target remote-fs-pre.target".
ready_before_rfp() {
  local j=$OUT.journal-at-start l_ready l_started l_rfp
  l_ready=$(grep -n -E 'lunkeeper\[[0-9]+\]: (.*: )?ready elapsed_ms=' "$j" | head -n 1 | cut -d: -f1)
  l_started=$(grep -n 'systemd\[1\]: Started lunkeeper.service' "$j" | head -n 1 | cut -d: -f1)
  l_rfp=$(grep -n 'systemd\[1\]: Reached target remote-fs-pre.target' "$j" | head -n 1 | cut -d: -f1)
  echo "journal lines: ready=${l_ready:-none} started=${l_started:-none} remote-fs-pre=${l_rfp:-none}"
  [[ -n $l_ready && -n $l_started && -n $l_rfp ]] && ((l_ready < l_rfp && l_started < l_rfp))
}
check "boot $n: lunkeeper ready (journal) before remote-fs-pre.target reached" ready_before_rfp
# READY=1 is also sent after 60 s without the volumes; the "ready" must be the settled one.
ready_settled() {
  local ms
  ms=$(journalctl -b -u "$U" -o cat --no-pager | grep -m1 -E '(^|: )ready elapsed_ms=' | sed -n 's/.*elapsed_ms=\([0-9]*\).*/\1/p')
  echo "ready after ${ms:-?} ms"
  [[ -n $ms ]] && ((ms < 60000))
}
check "boot $n: lunkeeper's READY came from a settled pass (before the 60 s deadline)" ready_settled
devices_before_rfp() {
  local rfp v t
  rfp=$(mono remote-fs-pre.target ActiveEnterTimestampMonotonic)
  for v in vol0 vol1; do
    t=$(mono "$(systemd-escape --path "/dev/lunkeeper/$v").device" ActiveEnterTimestampMonotonic)
    echo "/dev/lunkeeper/$v device unit active at ${t}us, remote-fs-pre.target at ${rfp}us"
    [[ $t =~ ^[0-9]+$ && $rfp =~ ^[0-9]+$ ]] && ((t > 0 && t <= rfp)) || return 1
  done
}
check "boot $n: /dev/lunkeeper/vol0 and vol1 appeared before remote-fs-pre.target" devices_before_rfp
# The maps themselves (attached), from the journal: multipathd's "WWID: addmap [...]" (v0.9.4),
# "WWID: add map" or "WWID: load table" line before "Reached target remote-fs-pre.target".
maps_before_rfp() {
  local j=$OUT.journal-at-start l_rfp v dm wwid l_map
  l_rfp=$(grep -n 'systemd\[1\]: Reached target remote-fs-pre.target' "$j" | head -n 1 | cut -d: -f1)
  [[ -n $l_rfp ]] || { echo "remote-fs-pre.target not reached"; return 1; }
  for v in vol0 vol1; do
    dm=$(basename "$(readlink -f "/dev/lunkeeper/$v")")
    wwid=$(cat "/sys/block/$dm/dm/uuid") || return 1
    wwid=${wwid#mpath-}
    l_map=$(grep -n -E "multipathd\[[0-9]+\]: $wwid: (addmap|add map|load table)" "$j" | head -n 1 | cut -d: -f1)
    echo "$v ($wwid): map line ${l_map:-none}, remote-fs-pre.target line $l_rfp"
    [[ -n $l_map ]] && ((l_map < l_rfp)) || return 1
  done
}
check "boot $n: the multipath maps of vol0 and vol1 were made (journal) before remote-fs-pre.target" maps_before_rfp
mounted() {
  findmnt -n -o SOURCE,FSTYPE,OPTIONS "$MNT" || return 1
  [[ $(findmnt -n -o FSTYPE "$MNT") == ext4 ]] || return 1
  [[ $(systemctl is-active mnt-vol0.mount) == active ]] || return 1
  [[ $(readlink -f "$(findmnt -n -o SOURCE "$MNT")") == "$(readlink -f /dev/lunkeeper/vol0)" ]]
}
check "boot $n: ext4 on /dev/lunkeeper/vol0 mounted at $MNT from fstab (_netdev)" mounted
check "boot $n: every volume in the file has a readable /dev/lunkeeper link" links_ok
check "boot $n: journalctl -u lunkeeper VOLUME=vol0 is vol0's history (its actions, ACTION/RESULT, its WWID only)" journal_history vol0 vol1
check "boot $n: node_exporter's /metrics shows lunkeeper's series ($(volumes | wc -l) volumes ready, 2 active paths each, 64 MiB)" metrics_as_expected

# ---- boots 2 and 3: the previous boot's data and shutdown ------------------------------------
if ((n >= 2)); then
  check "boot $n: data written and fsynced in boot $((n - 1)) verifies" verify_sum data
  check "boot $n: write acknowledged (no fsync) just before boot $((n - 1))'s shutdown verifies" verify_sum last-write
  shutdown_order() {
    local j=$OUT.journal-prev l_umount l_gone
    journalctl -b -1 -o short-monotonic --no-pager >"$j" 2>&1
    l_umount=$(grep -n 'Unmounted mnt-vol0.mount' "$j" | head -n 1 | cut -d: -f1)
    # The first sign of the sessions going: iscsid or open-iscsi stopping, a logout, a
    # connection error, or multipathd stopping (its maps' paths go with it).
    l_gone=$(grep -n -E 'Stopping (iscsid|open-iscsi|multipathd)\.service|Logging out of session|Logout of \[|detected conn error|session recovery timed out' "$j" | head -n 1 | cut -d: -f1)
    echo "previous boot's journal lines: unmounted=${l_umount:-none} first-session-going=${l_gone:-none (after the journal stopped)}"
    [[ -n $l_umount ]] || return 1
    [[ -z $l_gone ]] || ((l_umount < l_gone))
  }
  check "boot $n: boot $((n - 1))'s clean shutdown unmounted $MNT before the sessions went" shutdown_order
fi

# ---- boot 1: security exposure, reload, stop, restart -----------------------------------------
if ((n == 1)); then
  systemd-analyze security --no-pager "$U" >"$OUT.security" 2>&1
  exposure=$(sed -n 's/.*Overall exposure level for lunkeeper.service: \([0-9.]*\).*/\1/p' "$OUT.security")
  log "systemd-analyze security: exposure ${exposure:-?}"
  echo "exposure ${exposure:-?}" >"$RES/exposure"
  check "boot 1: systemd-analyze security lunkeeper.service exposure ${exposure:-?} <= 2.5" \
    python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) <= 2.5 else 1)' "${exposure:-99}"

  # reload applies an edit: add vol2, `systemctl reload`, its link appears.
  cat >>"$CONF" <<'EOT'

[[volume]]
name = "vol2"
target = "iqn.2026-12.test.lunkeeper:boot"
portals = ["127.0.0.1:3260", "127.0.0.2:3260"]
lun = 2
EOT
  reload_adds() {
    systemctl reload "$U" || return 1
    wait_for 90 test -b /dev/lunkeeper/vol2 || { echo "no /dev/lunkeeper/vol2 after 90 s"; return 1; }
    journalctl -b -u "$U" --no-pager | grep -q 'Reloaded lunkeeper.service' || { echo "no 'Reloaded' in the journal"; return 1; }
  }
  check "boot 1: systemctl reload applies an added volume (/dev/lunkeeper/vol2 appears)" reload_adds
  wait_for 60 links_ok
  # The same daemon since boot: its two logins (one session per portal, shared by the volumes)
  # and the reload (the edit's own inotify event reloads too: one or two).
  check "boot 1: /metrics after the reload: vol2 ready, reloads accepted, 2 logins" metrics_as_expected \
    'lunkeeper_config_reloads_total{result="accepted"} >=1' \
    'lunkeeper_config_reloads_total{result="rejected"} 0' \
    'lunkeeper_actions_total{kind="login",result="changed"} 2'

  s0=$(sessions)
  m0=$(maps)
  stop_leaves() {
    systemctl stop "$U" || return 1
    [[ $(systemctl is-active "$U") != active ]] || return 1
    same sessions "$s0" "$(sessions)" && same maps "$m0" "$(maps)" && links_ok && mountpoint -q "$MNT"
  }
  check "boot 1: systemctl stop leaves every volume attached (same sessions, maps, links, mount)" stop_leaves
  start_adopts() {
    systemctl start "$U" || return 1
    sleep 5
    same sessions "$s0" "$(sessions)" && same maps "$m0" "$(maps)" && links_ok
  }
  check "boot 1: systemctl start after stop adopts without churn" start_adopts
  restart_no_churn() {
    local pid0
    pid0=$(main_pid)
    systemctl restart "$U" || return 1
    [[ $(main_pid) != "$pid0" ]] || { echo "MainPID unchanged"; return 1; }
    sleep 5
    same sessions "$s0" "$(sessions)" && same maps "$m0" "$(maps)" && links_ok
  }
  check "boot 1: systemctl restart causes no session churn (same session ids)" restart_no_churn
fi

# ---- boot 2: the watchdog kills a frozen daemon, the new one adopts ---------------------------
if ((n == 2)); then
  s0=$(sessions)
  m0=$(maps)
  watchdog() {
    local pid0 r0 since
    pid0=$(main_pid)
    r0=$(nrestarts)
    since=$(date '+%Y-%m-%d %H:%M:%S')
    echo "WatchdogUSec=$(systemctl show -p WatchdogUSec --value "$U") pid $pid0 NRestarts $r0"
    kill -STOP "$pid0" || return 1
    # WatchdogSec=30s, then RestartSec=2s and the new daemon's first pass.
    if ! wait_for 150 bash -c "[[ \$(systemctl show -p NRestarts --value $U) -gt $r0 && \$(systemctl is-active $U) == active ]]"; then
      echo "not restarted within 150 s: NRestarts $(nrestarts), $(systemctl is-active "$U")"
      return 1
    fi
    journalctl -u "$U" --since "$since" --no-pager | grep -i 'watchdog timeout' || { echo "no watchdog timeout in the journal"; return 1; }
    echo "NRestarts now $(nrestarts), MainPID $(main_pid)"
    [[ $(main_pid) != "$pid0" ]]
  }
  check "boot 2: a frozen daemon (SIGSTOP) is killed by the watchdog and restarted" watchdog
  adopts() {
    sleep 5
    same sessions "$s0" "$(sessions)" && same maps "$m0" "$(maps)" && links_ok && mountpoint -q "$MNT"
  }
  check "boot 2: the daemon restarted by the watchdog adopts everything (same session ids)" adopts
fi

# ---- every boot: data for the next one ----------------------------------------------------------
if ((n < ${LK_BOOTS:-3})); then
  if sum=$(write_file "$MNT/data" $((4 * 1024 * 1024)) 1); then
    record_sum data "$sum"
    pass "boot $n: wrote and fsynced $MNT/data for the next boot"
  else
    fail "boot $n: write $MNT/data" "$sum"
  fi
fi
journalctl -b -o short-monotonic --no-pager >"$OUT.journal-at-end" 2>&1
sessions >"$OUT.sessions"
maps >"$OUT.maps"
touch "$OUT.done"
# Last: a write acknowledged by write(2) but not fsynced; only a clean shutdown that unmounts
# before the sessions go gets it to the LUN.
if ((n < ${LK_BOOTS:-3})); then
  sum=$(write_file "$MNT/last-write" $((1024 * 1024)) 0) && record_sum last-write "$sum"
fi
sync "$OUT" "$OUT.done" 2>/dev/null
log "done; powering off"
systemctl --no-block poweroff
