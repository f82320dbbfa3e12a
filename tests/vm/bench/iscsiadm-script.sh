#!/usr/bin/env bash
# The hand-written contender for tests/vm/bench.sh: what block scripts around the world do,
# volume after volume, with iscsiadm and polling (no fixed sleeps).
#
#   iscsiadm-script.sh attach|detach VOLUMES
#
# VOLUMES has one line per volume: "<name> <iqn> <lun> <portal> [<portal>...]".
# attach: discover through the first portal, log in to each portal, wait until each portal's
#         by-path disk exists and a multipath map holds it.
# detach: flush the map, delete the LUN's disks, log out of each session that has no disk
#         left, delete that node record; finally delete the discovery records.
set -euo pipefail
shopt -s nullglob
mode=$1 volumes=$2

wait_for() { # SECS CMD...
  local deadline=$((SECONDS + $1))
  shift
  until "$@"; do
    ((SECONDS < deadline)) || { echo "timeout: $*" >&2; return 1; }
    sleep 0.1
  done
}
bypath() { echo "/dev/disk/by-path/ip-$1-iscsi-$2-lun-$3"; }
disk_of() { local l; l=$(readlink -f "$(bypath "$@")") && echo "${l##*/}"; }
map_of_disk() { # sdX -> dm-N holding it
  local h
  for h in /sys/block/"$1"/holders/dm-*; do
    echo "${h##*/}"
    return 0
  done
  return 1
}
has_map() { local d; d=$(disk_of "$@") && map_of_disk "$d" >/dev/null; }
session_has_disks() { # iqn portal
  local s
  for s in /sys/class/iscsi_session/session*; do
    [[ $(cat "$s/targetname") == "$1" ]] || continue
    local c=("/sys/class/iscsi_connection/connection${s##*session}":*)
    [[ $(cat "${c[0]}/persistent_address"):$(cat "${c[0]}/persistent_port") == "$2" ]] || continue
    local d
    for d in "$s"/device/target*/*:*:*:*/block/*; do return 0; done
    return 1
  done
  return 1
}

declare -A discovered=()
while read -r name iqn lun portals; do
  [[ -n $name ]] || continue
  read -r -a ps <<<"$portals"
  if [[ $mode == attach ]]; then
    iscsiadm -m discovery -t sendtargets -p "${ps[0]}" >/dev/null
    discovered[${ps[0]}]=1
    for p in "${ps[@]}"; do
      rc=0
      iscsiadm -m node -T "$iqn" -p "$p" --login >/dev/null || rc=$?
      ((rc == 0 || rc == 15)) || { echo "login $iqn $p: exit $rc" >&2; exit 1; }
    done
    for p in "${ps[@]}"; do
      wait_for 120 has_map "$p" "$iqn" "$lun"
    done
    dm=$(map_of_disk "$(disk_of "${ps[0]}" "$iqn" "$lun")")
    dd if="/dev/$dm" of=/dev/null bs=4k count=1 iflag=direct status=none
    echo "attached $name /dev/$dm"
  else
    disks=()
    for p in "${ps[@]}"; do
      d=$(disk_of "$p" "$iqn" "$lun") && [[ -e /sys/block/$d ]] && disks+=("$d")
    done
    if ((${#disks[@]})); then
      if dm=$(map_of_disk "${disks[0]}"); then
        multipath -f "$(cat "/sys/block/$dm/dm/name")"
      fi
      for d in "${disks[@]}"; do
        blockdev --flushbufs "/dev/$d"
        echo 1 >"/sys/block/$d/device/delete"
      done
    fi
    for p in "${ps[@]}"; do
      if ! session_has_disks "$iqn" "$p"; then
        iscsiadm -m node -T "$iqn" -p "$p" --logout >/dev/null 2>&1 || true
        iscsiadm -m node -T "$iqn" -p "$p" -o delete >/dev/null 2>&1 || true
      fi
    done
    discovered[${ps[0]}]=1
    echo "detached $name"
  fi
done <"$volumes"
if [[ $mode == detach ]]; then
  for p in "${!discovered[@]}"; do
    iscsiadm -m discoverydb -t sendtargets -p "$p" -o delete >/dev/null 2>&1 || true
  done
fi
