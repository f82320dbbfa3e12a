#!/usr/bin/env bash
# smoke.sh: guest script (run it with tests/vm/vm.sh tests/vm/smoke.sh) that proves the VM
# harness with plain tools, no lunkeeper: a two-portal LIO target with LUNs 0 and 300, node
# records without tpgt, scan=manual logins, targeted scans of LUN 300, a multipath map made with
# `multipathd add map`, 16 MiB of O_DIRECT I/O through it, and a full teardown. On the way it
# saves the sysfs layouts, node record format, iscsiadm exit codes and multipathd replies that
# lunkeeper depends on into $OUT/captures/ (copied by hand into tests/vm/captures/).
# shellcheck disable=SC2016,SC2119 # bash -c '...' bodies expand in the child; no args to lk_boot_stack
# shellcheck source=guest-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/guest-lib.sh"

CAP=$OUT/captures
mkdir -p "$CAP"
IQN=iqn.2026-11.test.lunkeeper:smoke
OTHER_IQN=iqn.2026-11.test.lunkeeper:other
CHAP_IQN=iqn.2026-11.test.lunkeeper:chap
P1=127.0.0.1:3260
P2=127.0.0.2:3260
CHAP_USER=lk-initiator
CHAP_PASS=lk-chap-secret-0001
MUTUAL_USER=lk-target
MUTUAL_PASS=lk-mutual-secret-0002

# ---- stack ------------------------------------------------------------------------------------
lk_boot_stack
lk_check "systemd-udevd answers 'udevadm control --ping'" udevadm control --ping
lk_check "iscsid accepts connections on @ISCSIADM_ABSTRACT_NAMESPACE" lk_iscsid_ready
lk_check "multipathd answers 'show daemon' with no /etc/multipath.conf" \
  bash -c '! test -e /etc/multipath.conf && multipathd show daemon | grep -Eq "^pid [0-9]+ (idle|running)$"'
lk_fact multipathd.md "multipathd defaults section (no multipath.conf)" \
  bash -c "multipathd show config | sed -n '/^defaults {/,/^}/p'"
lk_check "compiled-in find_multipaths is \"strict\"" \
  grep -Eq '^[[:space:]]*find_multipaths "?strict"?' <<<"$LK_FACT_OUT"

# ---- targets ----------------------------------------------------------------------------------
lk_target smoke "$IQN" --luns "0 300" --portals "$P1 $P2" --size 64M | tee "$CAP/targets.txt"
lk_target other "$OTHER_IQN" --luns "0" --portals "$P1" --size 16M | tee -a "$CAP/targets.txt"
lk_target chap "$CHAP_IQN" --luns "0" --portals "$P1 $P2" --size 16M --tpg-per-portal \
  --chap "$CHAP_USER" "$CHAP_PASS" --mutual "$MUTUAL_USER" "$MUTUAL_PASS" | tee -a "$CAP/targets.txt"
WWID=$(lk_wwid smoke 300)
WWID0=$(lk_wwid smoke 0)
lk_check "three targets each have an np for $P1" \
  test -d "$LK_CFG/iscsi/$IQN/tpgt_1/np/$P1" -a -d "$LK_CFG/iscsi/$OTHER_IQN/tpgt_1/np/$P1" \
  -a -d "$LK_CFG/iscsi/$CHAP_IQN/tpgt_1/np/$P1"
lk_fact discovery.md "SendTargets on $P1 (nonpersistent: no records written)" \
  timeout 60 iscsiadm -m discovery -t st -p "$P1" -o nonpersistent
lk_check "SendTargets on the shared portal $P1 lists the smoke and other targets" \
  bash -c 'grep -q "^127.0.0.1:3260,1 $1\$" <<<"$3" && grep -q "^127.0.0.1:3260,1 $2\$" <<<"$3"' _ \
  "$IQN" "$OTHER_IQN" "$LK_FACT_OUT"
lk_fact discovery.md "SendTargets on $P2" timeout 60 iscsiadm -m discovery -t st -p "$P2" -o nonpersistent
lk_check_eq "nonpersistent discovery wrote no node record" "" "$(find /etc/iscsi/nodes -mindepth 1)"

# ---- node records -----------------------------------------------------------------------------
lk_fact nodes.md "node record for portal 1, no tpgt" iscsiadm -m node -o new -T "$IQN" -p "$P1"
lk_check_eq "iscsiadm -m node -o new -T IQN -p $P1 exits 0" 0 "$LK_FACT_RC"
lk_fact nodes.md "node record for portal 2, no tpgt" iscsiadm -m node -o new -T "$IQN" -p "$P2"
lk_check_eq "iscsiadm -m node -o new -T IQN -p $P2 exits 0" 0 "$LK_FACT_RC"
lk_fact nodes.md "layout of /etc/iscsi/nodes after -o new without tpgt" \
  find /etc/iscsi/nodes -printf '%y %m %P\n'
# Debian's open-iscsi 2.1.8: without a tpgt the record is a flat FILE named "IP,PORT" (no
# ",TPGT" dir, no iface file below it).
REC1=/etc/iscsi/nodes/$IQN/127.0.0.1,3260
REC2=/etc/iscsi/nodes/$IQN/127.0.0.2,3260
lk_check_eq "-o new without tpgt made flat record files nodes/IQN/IP,PORT" \
  "$(printf 'd %s\nf %s\nf %s' "$IQN" "${REC1#/etc/iscsi/nodes/}" "${REC2#/etc/iscsi/nodes/}")" \
  "$(find /etc/iscsi/nodes -mindepth 1 -printf '%y %P\n' | sort)"
lk_fact nodes.md "set node.session.scan=manual on every record of the target" \
  iscsiadm -m node -T "$IQN" -o update -n node.session.scan -v manual
lk_check "record for $P1 stores node.session.scan = manual" grep -qx 'node.session.scan = manual' "$REC1"
lk_check "record for $P2 stores node.session.scan = manual" grep -qx 'node.session.scan = manual' "$REC2"

# ---- two sessions, no LUN until the targeted scan ----------------------------------------------
lk_check "login $P1" timeout 120 iscsiadm -m node -T "$IQN" -p "$P1" --login
lk_check "login $P2" timeout 120 iscsiadm -m node -T "$IQN" -p "$P2" --login
S1=$(lk_session_for "$IQN" "$P1")
S2=$(lk_session_for "$IQN" "$P2")
lk_check_eq "both sessions LOGGED_IN" "LOGGED_IN LOGGED_IN" "$(lk_session_state "$S1") $(lk_session_state "$S2")"
H1=$(lk_session_host "$S1")
H2=$(lk_session_host "$S2")
lk_log "session $S1 ($P1) host $H1; session $S2 ($P2) host $H2"
lk_check_eq "scan=manual: no SCSI device on host$H1/host$H2 after login" "" \
  "$(lk_host_devices "$H1")$(lk_host_devices "$H2")"
lk_check_eq "scan=manual: no target$H1:* dir under the session" "" \
  "$(find "/sys/devices/platform/host$H1/session$S1" -maxdepth 1 -name 'target*')"

lk_check "write '0 - 300' to host$H1/scan" lk_scan "$H1" "0 - 300"
lk_check "write '- - 300' to host$H2/scan" lk_scan "$H2" "- - 300"
lk_check_eq "'0 - 300' brought exactly LUN 300 on host$H1" "$H1:0:0:300" "$(lk_host_devices "$H1")"
lk_check_eq "'- - 300' brought exactly LUN 300 on host$H2" "$H2:0:0:300" "$(lk_host_devices "$H2")"
lk_check_wait "LUN 300 has a block device on both paths" 30 \
  bash -c 'ls /sys/class/scsi_device/$1/device/block/sd* && ls /sys/class/scsi_device/$2/device/block/sd*' _ \
  "$H1:0:0:300" "$H2:0:0:300"
udevadm settle --timeout=60
SD1=$(lk_hctl_disk "$H1:0:0:300")
SD2=$(lk_hctl_disk "$H2:0:0:300")
lk_log "LUN 300: $SD1 via $P1, $SD2 via $P2; expected WWID $WWID"
lk_check_eq "no LUN 0 disk (only LUN 300 scanned)" "" "$(lk_disks_of_wwid "$WWID0")"
lk_check_eq "sysfs wwid of $SD1 is naa.+NAA derived from the unit serial" "naa.${WWID#3}" \
  "$(cat "/sys/block/$SD1/device/wwid")"
lk_check_eq "sysfs wwid of $SD2 is the same" "naa.${WWID#3}" "$(cat "/sys/block/$SD2/device/wwid")"
lk_check_wwid smoke 300 "$SD2"
lk_check_eq "udev ID_SERIAL of $SD1 is the WWID" "$WWID" \
  "$(udevadm info -q property -n "/dev/$SD1" | sed -n 's/^ID_SERIAL=//p')"
lk_check_eq "scsi_id -g -u of $SD2 is the WWID" "$WWID" "$(/lib/udev/scsi_id -g -u -d "/dev/$SD2")"
lk_check_eq "LUN size is 64 MiB (131072 sectors)" 131072 "$(cat "/sys/block/$SD1/size")"

# ---- multipath ---------------------------------------------------------------------------------
lk_check_wait "multipathd knows both paths" 30 \
  bash -c 'p=$(multipathd show paths raw format "%d"); grep -qx "$1" <<<"$p" && grep -qx "$2" <<<"$p"' _ "$SD1" "$SD2"
lk_fact multipathd.md "show paths before any map (find_multipaths strict)" \
  multipathd show paths format "%d %w %t %o %T %m"
no_map() { ! lk_dm_of_wwid "$1" && ! test -e "/dev/mapper/$1"; }
lk_check "find_multipaths strict: two paths formed no map by themselves" no_map "$WWID"
lk_fact multipath.md "multipath -a with a bare WWID (multipath-tools 0.9.4)" multipath -a "$WWID"
lk_check_eq "multipath -a <bare WWID> exits 0" 0 "$LK_FACT_RC"
lk_check "multipath -a wrote /$WWID/ to /etc/multipath/wwids" grep -qx "/$WWID/" /etc/multipath/wwids
lk_fact multipath.md "contents of /etc/multipath/wwids after multipath -a" cat /etc/multipath/wwids
lk_fact multipath.md "is there a map right after multipath -a (no wait)?" \
  bash -c 'ls /dev/mapper; dmsetup ls --target multipath'
lk_fact multipathd.md "add map <wwid>" multipathd add map "$WWID"
lk_check_eq "'multipathd add map WWID' replies ok" ok "$LK_FACT_OUT"
lk_check_eq "'multipathd add map WWID' CLI exits 0" 0 "$LK_FACT_RC"
lk_check_wait "/dev/mapper/$WWID appears with 2 slaves" 30 lk_map_has_paths "$WWID" 2
DM=$(lk_dm_of_wwid "$WWID")
lk_check_eq "$DM slaves are the two LUN 300 disks" "$(printf '%s\n' "$SD1" "$SD2" | sort | xargs)" "$(lk_dm_slaves "$DM")"
lk_check_eq "$DM dm/uuid is mpath-WWID" "mpath-$WWID" "$(cat "/sys/block/$DM/dm/uuid")"
lk_check_eq "$DM dm/name is the WWID (user_friendly_names no)" "$WWID" "$(cat "/sys/block/$DM/dm/name")"
lk_fact multipathd.md "show maps json" multipathd show maps json
lk_check "'show maps json' parses and lists the map with 2 paths" python3 -c '
import json, sys
doc = json.loads(sys.argv[1])
maps = [m for m in doc["maps"] if m["uuid"] == sys.argv[2]]
assert len(maps) == 1, maps
paths = [p["dev"] for pg in maps[0]["path_groups"] for p in pg["paths"]]
assert len(paths) == 2, paths
' "$LK_FACT_OUT" "$WWID"
lk_fact multipathd.md "show maps" multipathd show maps
lk_fact multipathd.md "show maps raw format" multipathd show maps raw format "%n %w %d %N %Q"
lk_fact multipathd.md "show paths raw format" multipathd show paths raw format "%d %w %t %o %T %D"
lk_fact multipathd.md "show map json (one map)" multipathd show map "$WWID" json
lk_fact multipathd.md "dmsetup table of the map" dmsetup table "$WWID"
lk_fact multipathd.md "multipath -ll" multipath -ll "$WWID"
lk_fact multipathd.md "show status" multipathd show status

# ---- I/O through the map ----------------------------------------------------------------------
head -c 16M /dev/urandom >"$LK_STATE/random.bin"
SUM=$(sha256sum <"$LK_STATE/random.bin" | cut -d' ' -f1)
lk_check "write 16 MiB of random data to /dev/mapper/$WWID with O_DIRECT" \
  dd if="$LK_STATE/random.bin" of="/dev/mapper/$WWID" bs=1M count=16 oflag=direct conv=fsync status=none
lk_check_eq "O_DIRECT read back through the map has the same sha256" "$SUM" \
  "$(dd if="/dev/mapper/$WWID" bs=1M count=16 iflag=direct status=none | sha256sum | cut -d' ' -f1)"
lk_check_eq "O_DIRECT read through path $SD1 has the same sha256" "$SUM" \
  "$(dd if="/dev/$SD1" bs=1M count=16 iflag=direct status=none | sha256sum | cut -d' ' -f1)"
lk_check_eq "O_DIRECT read through path $SD2 has the same sha256" "$SUM" \
  "$(dd if="/dev/$SD2" bs=1M count=16 iflag=direct status=none | sha256sum | cut -d' ' -f1)"
lk_check_eq "the target's backstore file holds the data" "$SUM" \
  "$(head -c 16M "$LK_BACKSTORE_DIR/$(cat "$LK_STATE/targets/smoke/backstore.300").img" | sha256sum | cut -d' ' -f1)"

# ---- sysfs captures (map up, two sessions with LUN 300) -----------------------------------------
capture_sysfs() {
  find /sys/class/iscsi_session /sys/class/iscsi_connection /sys/class/iscsi_host \
    /sys/class/scsi_host /sys/class/scsi_device /sys/block -maxdepth 1 -printf '%p -> %l\n' \
    >"$CAP/sysfs-classes.txt"
  local i s h sd sdir hdir f d
  for i in 1 2; do
    s=S$i h=H$i sd=SD$i
    s=${!s} h=${!h} sd=${!sd}
    f=$CAP/sysfs-path$i.txt
    sdir=$(readlink -f "/sys/class/iscsi_session/session$s/device")
    hdir=${sdir%/*}
    {
      echo "# path $i: session$s on host$h, LUN 300 = $sd (boot-specific numbers)"
      echo "# readlink -f /sys/class/iscsi_session/session$s/device -> $sdir"
      for d in "$hdir" "$sdir" "$sdir/iscsi_session/session$s" "$sdir/connection$s:0" \
        "$sdir/connection$s:0/iscsi_connection/connection$s:0" "$hdir/iscsi_host/host$h" \
        "$hdir/scsi_host/host$h" "$sdir/target$h:0:0" "$sdir/target$h:0:0/$h:0:0:300" \
        "$sdir/target$h:0:0/$h:0:0:300/scsi_device/$h:0:0:300" \
        "$sdir/target$h:0:0/$h:0:0:300/block" "$sdir/target$h:0:0/$h:0:0:300/block/$sd" \
        "$sdir/target$h:0:0/$h:0:0:300/block/$sd/holders"; do
        echo
        echo "\$ ls -la $d"
        ls -la "$d" 2>&1 || true
      done
      echo
      echo "# every entry under $hdir (power/ queue/ mq/ trace/ integrity/ pruned); l = symlink"
      find "$hdir" \( -name power -o -name queue -o -name mq -o -name trace -o -name integrity \) -prune \
        -o -type l -printf 'l %P -> %l\n' -o -printf '%y %P\n' | sort -k2
      echo
      echo "# attribute values (path:value)"
      (cd "$hdir" && grep -s -H '' "session$s/iscsi_session/session$s"/{targetname,tpgt,state,recovery_tmo,ifacename,initiatorname,creator,target_id,sid} \
        "session$s/connection$s:0/iscsi_connection/connection$s:0"/{persistent_address,persistent_port,address,port,state} \
        "session$s/target$h:0:0/$h:0:0:300"/{state,wwid,vendor,model,rev,type,queue_depth,timeout} \
        "session$s/target$h:0:0/$h:0:0:300/block/$sd"/{dev,size,ro,removable}) || true
    } >"$f" 2>&1
  done
  f=$CAP/sysfs-dm.txt
  {
    echo "# $DM = multipath map of $WWID, slaves $SD1 $SD2 (boot-specific numbers)"
    echo "\$ readlink /sys/block/$DM -> $(readlink "/sys/block/$DM")"
    for d in "/sys/block/$DM/" "/sys/block/$DM/dm" "/sys/block/$DM/slaves" "/sys/block/$DM/holders" \
      "/sys/block/$SD1/holders" "/dev/mapper"; do
      echo
      echo "\$ ls -la $d"
      ls -la "$d" 2>&1 || true
    done
    echo
    grep -s -H '' "/sys/block/$DM/dm"/{name,uuid,suspended,use_blk_mq} "/sys/block/$DM"/{dev,size} || true
    echo
    echo "\$ ls -l /dev/disk/by-id"
    ls -l /dev/disk/by-id 2>&1 || true
  } >"$f" 2>&1
  {
    for d in "$SD1" "$DM"; do
      echo "\$ udevadm info /dev/$d"
      udevadm info "/dev/$d"
      echo
    done
  } >"$CAP/udev-properties.txt" 2>&1
}
capture_sysfs
lk_check "sysfs captures written" test -s "$CAP/sysfs-path1.txt" -a -s "$CAP/sysfs-path2.txt" -a -s "$CAP/sysfs-dm.txt"

# ---- teardown with plain tools ----------------------------------------------------------------
lk_fact multipathd.md "del map <wwid>" multipathd del map "$WWID"
lk_check_eq "'multipathd del map WWID' replies ok" ok "$LK_FACT_OUT"
lk_check_wait "the map is gone" 30 bash -c '! test -e "/dev/mapper/$1" && ! ls /sys/block/'"$DM" _ "$WWID"
lk_fact multipathd.md "del map of a map that does not exist" multipathd del map "$WWID"
for sd in "$SD1" "$SD2"; do
  lk_check "echo 1 > /sys/block/$sd/device/delete" bash -c 'echo 1 >"/sys/block/$1/device/delete"' _ "$sd"
done
lk_check_wait "$SD1 and $SD2 are gone" 30 bash -c '! test -e /sys/block/$1 && ! test -e /sys/block/$2' _ "$SD1" "$SD2"
lk_check "logout $P1" timeout 60 iscsiadm -m node -T "$IQN" -p "$P1" --logout
lk_check "logout $P2" timeout 60 iscsiadm -m node -T "$IQN" -p "$P2" --logout
lk_check "-o delete record $P1" iscsiadm -m node -o delete -T "$IQN" -p "$P1"
lk_check "-o delete record $P2" iscsiadm -m node -o delete -T "$IQN" -p "$P2"
lk_fact multipath.md "multipath -w with a bare WWID" multipath -w "$WWID"
lk_check_eq "multipath -w <bare WWID> exits 0" 0 "$LK_FACT_RC"
lk_fact multipath.md "contents of /etc/multipath/wwids after multipath -w" cat /etc/multipath/wwids
lk_check "/etc/multipath/wwids has no /WWID/ line any more" bash -c '! grep -qx "/$1/" /etc/multipath/wwids' _ "$WWID"
lk_check_eq "no session of the smoke target left" "" "$(lk_sessions "$IQN")"
lk_check_eq "no disk with the WWID left" "" "$(lk_disks_of_wwid "$WWID")"
lk_check "no dm device for the WWID left" no_map "$WWID"
lk_check_eq "no node record dir for the target left" "" "$(find /etc/iscsi/nodes -mindepth 1 -path "*$IQN*")"
lk_fact multipathd.md "show maps raw format when there is no map" multipathd show maps raw format "%n %w"
lk_check "multipathd lists no map" bash -c '! grep -q "^3" <<<"$1"' _ "$LK_FACT_OUT"
lk_fact multipathd.md "show maps json when there is no map" multipathd show maps json

# ---- record format and -o new on an existing record (target "other") --------------------------
lk_fact nodes.md "-o new (other target)" iscsiadm -m node -o new -T "$OTHER_IQN" -p "$P1"
lk_fact nodes.md "-o update scan=manual, authmethod/username/password (dummy secret)" \
  iscsiadm -m node -T "$OTHER_IQN" -p "$P1" -o update -n node.session.scan -v manual \
  -n node.session.auth.authmethod -v CHAP -n node.session.auth.username -v dummy-user \
  -n node.session.auth.password -v dummy-secret-XYZ
OREC=$(find "/etc/iscsi/nodes/$OTHER_IQN" -type f | head -n 1)
lk_fact nodes.md "permissions of the record file" stat -c '%A %U:%G %n' "$OREC" "$(dirname "$OREC")"
lk_fact node-record.txt "record file after -o update (password set)" cat "$OREC"
lk_check "the record stores the password in plain text" grep -qx 'node.session.auth.password = dummy-secret-XYZ' "$OREC"
lk_fact nodes.md "iscsiadm -o show masks the password" \
  bash -c "iscsiadm -m node -T '$OTHER_IQN' -p '$P1' -o show | grep -E '^node.session.(scan|auth.(authmethod|username|password)) '"
lk_fact nodes.md "-o new on the existing record" iscsiadm -m node -o new -T "$OTHER_IQN" -p "$P1"
OTHER_NEW_RC=$LK_FACT_RC
lk_fact nodes.md "keys after -o new on the existing record" \
  bash -c "grep -E '^node.session.(scan|auth.(authmethod|username|password)) ' '$OREC'"
lk_log "-o new on an existing record: exit $OTHER_NEW_RC"
lk_fact exit-codes.md "logout when there is no session (node mode)" \
  timeout 60 iscsiadm -m node -T "$OTHER_IQN" -p "$P1" --logout
lk_fact exit-codes.md "logout of a session id that does not exist" timeout 60 iscsiadm -m session -r 999 --logout
lk_fact exit-codes.md "login to a portal with no record" timeout 60 iscsiadm -m node -T "$OTHER_IQN" -p "$P2" --login
lk_fact exit-codes.md "-o delete of a record that does not exist" iscsiadm -m node -o delete -T "$OTHER_IQN" -p "$P2"
lk_fact exit-codes.md "-o update of a record that does not exist" \
  iscsiadm -m node -o update -T "$OTHER_IQN" -p "$P2" -n node.session.scan -v manual
lk_fact nodes.md "-o new WITH a tpgt next to the record without one" \
  iscsiadm -m node -o new -T "$OTHER_IQN" -p "$P1,1"
lk_fact nodes.md "layout with a tpgt record and a no-tpgt record for the same portal" \
  find "/etc/iscsi/nodes/$OTHER_IQN" -printf '%y %m %P\n'
lk_fact nodes.md "iscsiadm -m node listing of both" iscsiadm -m node -T "$OTHER_IQN"
lk_fact nodes.md "-o delete -p IP:PORT (no tpgt) when both records exist" \
  iscsiadm -m node -o delete -T "$OTHER_IQN" -p "$P1"
lk_fact nodes.md "layout after that -o delete" find /etc/iscsi/nodes -mindepth 1 -printf '%y %P\n'
lk_check "-o delete -T (every portal) leaves no record dir of the other target" bash -c '
  iscsiadm -m node -o delete -T "$1"; rc=$?
  (( rc == 0 || rc == 21 )) && ! test -e "/etc/iscsi/nodes/$1"' _ "$OTHER_IQN"

# ---- CHAP target: wrong password, mutual CHAP, already logged in, delete while logged in -------
lk_check "-o new record for the CHAP target" iscsiadm -m node -o new -T "$CHAP_IQN" -p "$P1"
lk_check "set CHAP with a WRONG password" iscsiadm -m node -T "$CHAP_IQN" -p "$P1" -o update \
  -n node.session.scan -v manual -n node.session.auth.authmethod -v CHAP \
  -n node.session.auth.username -v "$CHAP_USER" -n node.session.auth.password -v wrong-secret-0000 \
  -n node.session.auth.username_in -v "$MUTUAL_USER" -n node.session.auth.password_in -v "$MUTUAL_PASS"
lk_fact exit-codes.md "login with a wrong CHAP password" timeout 120 iscsiadm -m node -T "$CHAP_IQN" -p "$P1" --login
lk_check "login with a wrong CHAP password fails" test "$LK_FACT_RC" -ne 0
lk_check_eq "no session left behind by the failed login" "" "$(lk_sessions "$CHAP_IQN")"
lk_check "set the right CHAP password" iscsiadm -m node -T "$CHAP_IQN" -p "$P1" -o update \
  -n node.session.auth.password -v "$CHAP_PASS"
lk_fact exit-codes.md "login with the right CHAP + mutual CHAP credentials" \
  timeout 120 iscsiadm -m node -T "$CHAP_IQN" -p "$P1" --login
lk_check_eq "login with right CHAP + mutual CHAP exits 0" 0 "$LK_FACT_RC"
CS=$(lk_session_for "$CHAP_IQN" "$P1" || true)
lk_check_eq "CHAP session is LOGGED_IN" LOGGED_IN "$(lk_session_state "${CS:-none}" 2>&1)"
lk_fact exit-codes.md "login when already logged in" timeout 120 iscsiadm -m node -T "$CHAP_IQN" -p "$P1" --login
lk_check_eq "still exactly one session to the CHAP target" "$CS" "$(lk_sessions "$CHAP_IQN")"

# Path loss via the per-portal TPG (lk_portal_enable) and recovery.
lk_check_eq "the CHAP target's $P1 is tpgt_1 and $P2 tpgt_2" "1 2" \
  "$(lk_portal_tpg "$CHAP_IQN" "$P1") $(lk_portal_tpg "$CHAP_IQN" "$P2")"
lk_check "disable the TPG of $P1" lk_portal_enable "$CHAP_IQN" "$P1" 0
lk_check_wait "session $CS leaves LOGGED_IN after its TPG is disabled" 60 \
  bash -c '[[ $(cat /sys/class/iscsi_session/session$1/state) != LOGGED_IN ]]' _ "$CS"
lk_fact exit-codes.md "session state while its TPG is disabled" cat "/sys/class/iscsi_session/session$CS/state"
lk_check "enable the TPG of $P1 again" lk_portal_enable "$CHAP_IQN" "$P1" 1
lk_check_wait "session $CS is LOGGED_IN again after re-enable" 120 \
  bash -c '[[ $(cat /sys/class/iscsi_session/session$1/state) == LOGGED_IN ]]' _ "$CS"

lk_fact exit-codes.md "-o delete of the record while logged in" iscsiadm -m node -o delete -T "$CHAP_IQN" -p "$P1"
lk_fact exit-codes.md "record files after that -o delete" find "/etc/iscsi/nodes" -mindepth 1 -printf '%y %P\n'
lk_fact exit-codes.md "logout by session id" timeout 60 iscsiadm -m session -r "$CS" --logout
lk_check_eq "no session to the CHAP target left" "" "$(lk_sessions "$CHAP_IQN")"

# ---- lk_cleanup_all on a busy state, then lk_target_remove ------------------------------------
lk_check "re-login both smoke portals (auto scan this time) for the cleanup test" bash -c '
  iscsiadm -m node -o new -T "$1" -p "$2" && iscsiadm -m node -o new -T "$1" -p "$3" &&
  iscsiadm -m node -T "$1" --login' _ "$IQN" "$P1" "$P2"
lk_check_wait "auto scan found 4 disks (LUN 0 and 300 on 2 paths)" 60 \
  bash -c '(( $(ls -d /sys/block/sd* | wc -l) == 4 ))'
udevadm settle --timeout=60
lk_check "multipath -a + add map for LUN 0" bash -c 'multipath -a "$1" && [[ $(multipathd add map "$1") == ok ]]' _ "$WWID0"
lk_check_wait "LUN 0 map has 2 paths" 30 lk_map_has_paths "$WWID0" 2
lk_check "lk_cleanup_all leaves no session, disk, map or record" lk_cleanup_all
lk_check_eq "wwids file is empty after lk_cleanup_all" "" "$(grep -v '^#' /etc/multipath/wwids || true)"
lk_target_remove other
lk_target_remove chap
lk_target_remove smoke
lk_check_eq "lk_target_remove left no target or backstore in configfs" "" \
  "$(find "$LK_CFG/iscsi" -mindepth 1 -maxdepth 1 -name 'iqn.*'; find "$LK_CFG/core/$LK_FILEIO_HBA" -mindepth 1 -maxdepth 1 -type d)"

lk_finish
