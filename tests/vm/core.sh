#!/usr/bin/env bash
# Core scenarios (issue 2, a–i) in one boot: lunkeeper apply/status against LIO targets,
# open-iscsi and multipathd with its compiled-in defaults (no multipath.conf).
# Run on the host: tests/vm/vm.sh tests/vm/core.sh
. "$(dirname "${BASH_SOURCE[0]}")/guest-lib.sh"

LK=${LUNKEEPER_BIN:?}
CONF=/etc/lunkeeper/volumes.toml
SECRETS=/etc/lunkeeper/secrets
P1=127.0.0.1:3260
P2=127.0.0.2:3260
N=0

# lk_apply [ARGS...]: lunkeeper apply; output in $OUT/apply-N.log; sets APPLY_RC and APPLY_LOG.
lk_apply() {
  N=$((N + 1))
  APPLY_LOG=$OUT/apply-$N.log
  APPLY_RC=0
  timeout 300 "$LK" --config "$CONF" apply --timeout 90 "$@" >"$APPLY_LOG" 2>&1 || APPLY_RC=$?
  lk_log "apply #$N exit $APPLY_RC: $(tail -n 12 "$APPLY_LOG" | tr '\n' '|')"
}

# A fingerprint of everything the kernel and open-iscsi hold: sessions, SCSI devices, maps,
# node records and the wwids file.
host_state() {
  {
    for s in $(lk_sessions); do echo "session $s $(cat /sys/class/iscsi_session/session$s/targetname) $(lk_session_portal "$s")"; done
    ls /sys/class/scsi_device/
    for d in /sys/block/dm-*; do echo "$(cat "$d/dm/name") $(lk_dm_slaves "${d##*/}")"; done
    find /etc/iscsi/nodes -type f | sort
    grep -v '^#' /etc/multipath/wwids 2>/dev/null || true
  } 2>/dev/null
}

no_map() { ! lk_dm_of_wwid "$1" >/dev/null 2>&1; }
no_holders() { [ -z "$(ls "/sys/block/$1/holders")" ]; }
not_in_file() { ! grep -Eq "$1" "$2"; }

status_field() { # NAME PYTHON-EXPR over v (the volume object)
  "$LK" --config "$CONF" status --json | python3 -c "
import json, sys
v = [v for v in json.load(sys.stdin)['volumes'] if v['name'] == '$1'][0]
print($2)"
}

lk_boot_stack

ALPHA=iqn.2026-11.test.lunkeeper:alpha
BETA=iqn.2026-11.test.lunkeeper:beta
FOREIGN=iqn.2026-11.test.lunkeeper:foreign
CHAP1=iqn.2026-11.test.lunkeeper:chap
CHAP2=iqn.2026-11.test.lunkeeper:mutual
lk_target alpha "$ALPHA" --luns "0 1 300" --portals "$P1 $P2"
lk_target beta "$BETA" --luns "0 1" --portals "$P1"
lk_target foreign "$FOREIGN" --luns "0" --portals "$P1"
lk_target chap "$CHAP1" --luns "0" --portals "$P1" --chap alice alice-secret-1234
lk_target mutual "$CHAP2" --luns "0" --portals "$P1" --chap bob bob-secret-12345 --mutual target-m target-secret-99
W300=$(lk_wwid alpha 300)
WB0=$(lk_wwid beta 0)
WB1=$(lk_wwid beta 1)
WC=$(lk_wwid chap 0)
WM=$(lk_wwid mutual 0)

mkdir -p "$SECRETS"
chmod 700 "$SECRETS"
echo alice-secret-1234 >"$SECRETS/alice"
echo bob-secret-12345 >"$SECRETS/bob"
echo target-secret-99 >"$SECRETS/target-m"
echo not-the-password >"$SECRETS/wrong"
chmod 600 "$SECRETS"/*

# (f) a session to another target, logged in by hand before lunkeeper runs (think: boot disk).
iscsiadm -m node -o new -T "$FOREIGN" -p "$P1" >/dev/null
iscsiadm -m node -T "$FOREIGN" -p "$P1" --login >/dev/null
FOREIGN_SID=$(lk_session_for "$FOREIGN" "$P1")
lk_wait_for 30 test -n "$(lk_disks_of_wwid "$(lk_wwid foreign 0)")"
FOREIGN_DISK=$(lk_disks_of_wwid "$(lk_wwid foreign 0)")
lk_log "foreign session $FOREIGN_SID disk $FOREIGN_DISK"

mkdir -p /etc/lunkeeper
cat >"$CONF" <<TOML
[defaults]
replacement_timeout = 5
login_timeout = 10

[[volume]]
name = "db"
target = "$ALPHA"
portals = ["$P1", "$P2"]
lun = 300

[[volume]]
name = "one-mp"
target = "$BETA"
portals = ["$P1"]
lun = 0
multipath = true

[[volume]]
name = "one-sd"
target = "$BETA"
portals = ["$P1"]
lun = 1
multipath = false

[[volume]]
name = "sec"
target = "$CHAP1"
portals = ["$P1"]
lun = 0
[volume.chap]
username = "alice"
password_file = "$SECRETS/alice"

[[volume]]
name = "msec"
target = "$CHAP2"
portals = ["$P1"]
lun = 0
[volume.chap]
username = "bob"
password_file = "$SECRETS/bob"
username_in = "target-m"
password_in_file = "$SECRETS/target-m"
TOML

lk_check "validate accepts the file" "$LK" --config "$CONF" validate

# ---- first apply: a, b, c, f, g(ok)
T0=$(_lk_now_ms)
lk_apply
lk_log "first apply took $(($(_lk_now_ms) - T0)) ms"
lk_check_eq "apply exits 0 when converged" 0 "$APPLY_RC"

# (a) two portals: a map with 2 slaves, data reads back.
lk_check "a: map $W300 has 2 slaves" lk_map_has_paths "$W300" 2
dd if=/dev/urandom of=/run/rand.bin bs=1M count=16 status=none
SUM_IN=$(sha256sum </run/rand.bin | cut -d' ' -f1)
lk_check "a: 16 MiB written through the map (O_DIRECT)" dd if=/run/rand.bin of="/dev/mapper/$W300" bs=1M oflag=direct status=none
SUM_OUT=$(dd if="/dev/mapper/$W300" bs=1M count=16 iflag=direct status=none | sha256sum | cut -d' ' -f1)
lk_check_eq "a: data read back through the map has the same checksum" "$SUM_IN" "$SUM_OUT"

# (b) one portal: multipath=true gives a 1-slave map; multipath=false an sd device and no map.
lk_check "b: one-portal multipath volume has a map with 1 slave" lk_map_has_paths "$WB0" 1
B1_DISK=$(lk_disks_of_wwid "$WB1")
lk_check "b: multipath=false volume has an sd device" test -b "/dev/$B1_DISK"
lk_check "b: multipath=false volume has no map" no_map "$WB1"
lk_check "b: multipath=false volume's disk has no holder" no_holders "$B1_DISK"
lk_check "b: status shows the sd device for one-sd" test "$(status_field one-sd "v['device']")" = "/dev/$B1_DISK"

# (c) only the listed LUN of a 3-LUN target exists.
for sid in $(lk_sessions "$ALPHA"); do
  lk_check_eq "c: session $sid to alpha carries only LUN 300" "$(lk_session_host "$sid"):0:0:300" "$(lk_host_devices "$(lk_session_host "$sid")" | tr '\n' ' ' | sed 's/ $//')"
done
lk_check_eq "c: two sessions to alpha" 2 "$(lk_sessions "$ALPHA" | wc -l)"
lk_check_eq "c: no disk with LUN 0 or 1 of alpha" "" "$(lk_disks_of_wwid "$(lk_wwid alpha 0)")$(lk_disks_of_wwid "$(lk_wwid alpha 1)")"

# (g) one-way and mutual CHAP attach.
lk_check "g: one-way CHAP volume has its map" lk_map_has_paths "$WC" 1
lk_check "g: mutual CHAP volume has its map" lk_map_has_paths "$WM" 1
lk_check "g: no secret in apply output" not_in_file 'alice-secret|bob-secret|target-secret' "$APPLY_LOG"
lk_check "g: no secret in status output" bash -c "! $LK --config $CONF status --json | grep -E 'secret-1|secret-9'"
REC=$(find /etc/iscsi/nodes/"$CHAP1" -type f | head -n1)
lk_check "g: node record keeps the secret, mode 0600" bash -c "grep -q 'node.session.auth.password = alice-secret-1234' '$REC' && [ \"\$(stat -c %a '$REC')\" = 600 ]"

# status --json shape and content.
lk_check_eq "status: db ready" ready "$(status_field db "v['state']")"
lk_check_eq "status: db device is the map" "/dev/mapper/$W300" "$(status_field db "v['device']")"
lk_check_eq "status: db wwid" "$W300" "$(status_field db "v['wwid']")"
lk_check_eq "status: db has 2 active paths" "active active" "$(status_field db "' '.join(p['state'] for p in v['paths'])")"

# (f) the foreign session is untouched.
lk_check_eq "f: foreign session still there after apply" "$FOREIGN_SID" "$(lk_session_for "$FOREIGN" "$P1")"
lk_check "f: foreign disk still there" test -b "/dev/$FOREIGN_DISK"

# ---- (d) a second apply changes nothing.
BEFORE=$(host_state)
lk_apply
lk_check_eq "d: second apply exits 0" 0 "$APPLY_RC"
lk_check "d: second apply took no action" grep -q '^0 actions taken' "$APPLY_LOG"
lk_check_eq "d: host state unchanged by the second apply" "$BEFORE" "$(host_state)"

# ---- (h) an invalid config: exit 2 naming file:line, nothing changes.
cp "$CONF" /run/good.toml
sed -i 's/^lun = 300$/lun = 300\nlunn = 3/' "$CONF"
BAD_LINE=$(grep -n '^lunn = 3$' "$CONF" | cut -d: -f1)
BEFORE=$(host_state)
lk_apply
lk_check_eq "h: invalid config exits 2" 2 "$APPLY_RC"
lk_check "h: the error names file:line" grep -q "$CONF:$BAD_LINE:" "$APPLY_LOG"
lk_check_eq "h: nothing changed on the host" "$BEFORE" "$(host_state)"
cp /run/good.toml "$CONF"

# ---- (i) a mounted volume set absent: refused, the mount keeps working.
mkfs.ext4 -q -F "/dev/mapper/$W300"
mkdir -p /run/lk-mnt/db
mount "/dev/mapper/$W300" /run/lk-mnt/db
echo before >/run/lk-mnt/db/file
sed -i '/^name = "db"$/a state = "absent"' "$CONF"
lk_apply
lk_check "i: apply refuses (non-zero exit)" test "$APPLY_RC" -ne 0
lk_check "i: apply says db is blocked" grep -Eq '^db +blocked' "$APPLY_LOG"
lk_check "i: and why: in use" grep -Eq '^  reason: in use' "$APPLY_LOG"
lk_check "i: map still has 2 slaves" lk_map_has_paths "$W300" 2
lk_check "i: the mount still works" bash -c "echo after >>/run/lk-mnt/db/file && sync && grep -q after /run/lk-mnt/db/file && findmnt /run/lk-mnt/db"
umount /run/lk-mnt/db

# ---- (e) absent: map, SCSI devices, sessions, node records and WWID entry all gone.
lk_apply
lk_check_eq "e: apply exits 0 after unmount" 0 "$APPLY_RC"
lk_check "e: no map for db" no_map "$W300"
lk_check_eq "e: no SCSI disk with db's WWID" "" "$(lk_disks_of_wwid "$W300")"
lk_check_eq "e: no session to alpha" "" "$(lk_sessions "$ALPHA")"
lk_check "e: no node record for alpha" test ! -e "/etc/iscsi/nodes/$ALPHA"
lk_check "e: WWID gone from /etc/multipath/wwids" not_in_file "/$W300/" /etc/multipath/wwids
lk_check_eq "e: status says absent" absent "$(status_field db "v['state']")"
lk_check "e: other volumes still ready" test "$(status_field one-mp "v['state']")" = ready

# ---- (g) a wrong password: apply fails naming the volume and the cause; nothing left behind.
# First "sec" leaves the file (lunkeeper owns it, so it is detached), so that the bad secret
# meets a real login rather than sec's existing session.
keep_volumes() { # NAME...: rewrite the file with only these [[volume]] blocks
  python3 - "$CONF" "$@" <<'PY'
import re, sys
path, keep = sys.argv[1], set(sys.argv[2:])
text = open(path).read()
head, *blocks = re.split(r'(?m)^(?=\[\[volume\]\])', text)
out = [b for b in blocks if re.search(r'(?m)^name = "([^"]+)"', b).group(1) in keep]
open(path, "w").write("".join(out))
PY
}
keep_volumes one-mp one-sd msec
lk_apply
lk_check_eq "sec dropped from the file: detached, exit 0" 0 "$APPLY_RC"
lk_check_eq "sec dropped from the file: no session to its target" "" "$(lk_sessions "$CHAP1")"
cat >>"$CONF" <<TOML

[[volume]]
name = "bad-secret"
target = "$CHAP1"
portals = ["$P1"]
lun = 0
[volume.chap]
username = "alice"
password_file = "$SECRETS/wrong"
TOML
lk_apply
lk_check "g: wrong password makes apply fail" test "$APPLY_RC" -ne 0
lk_check "g: the failure names the volume" grep -Eq '^bad-secret +failed' "$APPLY_LOG"
lk_check "g: and authentication" grep -Eq '^  reason: .*authentication' "$APPLY_LOG"
lk_check_eq "g: no session to the CHAP target left" "" "$(lk_sessions "$CHAP1")"
lk_check "g: no node record for the CHAP target left" test ! -e "/etc/iscsi/nodes/$CHAP1"
lk_check "g: the wrong secret is not in the output" not_in_file not-the-password "$APPLY_LOG"
lk_check "g: the other volumes stayed ready" test "$(status_field msec "v['state']")" = ready

# ---- teardown of everything lunkeeper attached; the foreign session survives (f).
sed -i 's/^lun = \([0-9]*\)$/lun = \1\nstate = "absent"/' "$CONF"
lk_apply
lk_check_eq "teardown: apply exits 0" 0 "$APPLY_RC"
lk_check_eq "teardown: only the foreign session is left" "$FOREIGN_SID" "$(lk_sessions | tr '\n' ' ' | sed 's/ $//')"
lk_check "teardown: the foreign disk is still there" test -b "/dev/$FOREIGN_DISK"
lk_check_eq "teardown: no multipath map left" "" "$(for d in /sys/block/dm-*; do cat $d/dm/uuid; done)"
lk_check_eq "teardown: only the foreign node record left" "$FOREIGN" "$(ls /etc/iscsi/nodes)"
lk_check_eq "teardown: wwids file has no entry" "" "$(grep -v '^#' /etc/multipath/wwids || true)"
lk_check "teardown: ownership records are empty" python3 -c "
import json; o = json.load(open('/var/lib/lunkeeper/owned.json'))
assert o.get('version') == 2 and not any(v for k, v in o.items() if k != 'version'), o"

lk_finish
