#!/bin/bash
# lk-bench.sh (in the guest, run by lk-bench.service from early in the boot): measures the time
# from the kernel's start until the multipath map of every WWID in /etc/lk-bench/wwids passes a
# 4 KiB O_DIRECT read through /dev/mapper/<map>, whoever attached them (lunkeeper, or open-iscsi's
# node.startup = automatic with multipathd). Then records when the attaching units and
# remote-fs-pre.target became active, appends one line to /var/lib/lk-boot/bench.txt and
# powers off.
#   mode=<mode> usable_s=<s since kernel start> userspace_s=<systemd's start> ...
set -uo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8
STATE=/var/lib/lk-boot
mode=$(cat /etc/lk-bench/mode)
mapfile -t wwids < <(grep -v '^#' /etc/lk-bench/wwids)

uptime_s() { cut -d' ' -f1 /proc/uptime; }
# usable WWID: its map exists, /dev/mapper/<name> is there, and a 4 KiB direct read succeeds.
usable() {
  local d
  for d in /sys/block/dm-*; do
    [[ $(cat "$d/dm/uuid" 2>/dev/null) == "mpath-$1" ]] || continue
    [[ -b /dev/mapper/$(cat "$d/dm/name") ]] || return 1
    timeout 20 dd if="/dev/mapper/$(cat "$d/dm/name")" of=/dev/null bs=4k count=1 iflag=direct status=none 2>/dev/null
    return
  done
  return 1
}
usable_s=
until [[ -n $usable_s ]]; do
  all=1
  for w in "${wwids[@]}"; do usable "$w" || { all=0; break; }; done
  if ((all)); then usable_s=$(uptime_s); break; fi
  # Nothing for 4 minutes (the host gives a boot 5): recorded as such.
  if (($(cut -d. -f1 /proc/uptime) > 240)); then usable_s=timeout; break; fi
  sleep 0.1
done
echo "lk-bench: $mode: every map usable at ${usable_s}s"

# The units' times (µs of CLOCK_MONOTONIC, the kernel's start = 0), once they are up.
mono_s() { # UNIT PROPERTY (no UNIT: the manager's own)
  local us
  if [[ -n $1 ]]; then us=$(systemctl show -p "$2" --value "$1" 2>/dev/null); else us=$(systemctl show -p "$2" --value 2>/dev/null); fi
  [[ $us =~ ^[0-9]+$ ]] && ((us > 0)) && printf '%d.%03d' $((us / 1000000)) $((us / 1000 % 1000)) || echo -
}
for _ in $(seq 1 300); do
  [[ $(systemctl is-active remote-fs-pre.target) == active ]] && break
  sleep 0.2
done
attacher=lunkeeper.service
[[ $mode == open-iscsi ]] && attacher=open-iscsi.service
line="mode=$mode usable_s=$usable_s userspace_s=$(mono_s "" UserspaceTimestampMonotonic)"
line+=" attacher_active_s=$(mono_s "$attacher" ActiveEnterTimestampMonotonic)"
line+=" remote_fs_pre_s=$(mono_s remote-fs-pre.target ActiveEnterTimestampMonotonic)"
line+=" sessions=$(ls -d /sys/class/iscsi_session/session* 2>/dev/null | wc -l)"
echo "lk-bench: $line"
mkdir -p "$STATE"
echo "$line" >>"$STATE/bench.txt"
sync
systemctl --no-block poweroff
