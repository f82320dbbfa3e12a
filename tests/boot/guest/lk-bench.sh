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

# One python process polls every 50 ms (a shell loop forks a few processes per look, which in a
# loaded emulated guest delayed the finish line by seconds). Usable: the map's uuid is
# mpath-<wwid>, /dev/mapper/<name> exists, and a 4 KiB O_DIRECT read of it succeeds (a map
# queueing I/O without paths answers when one comes, which is the moment it is usable).
# Prints seconds of CLOCK_MONOTONIC (0 = the kernel's start), or "timeout" after 240 s.
usable_s=$(python3 - "${wwids[@]}" <<'PY'
import mmap, os, signal, sys, time
want = set(sys.argv[1:])
buf = mmap.mmap(-1, 4096)
def alarm(*_):
    raise TimeoutError
signal.signal(signal.SIGALRM, alarm)
def maps():
    found = {}
    try:
        names = os.listdir("/sys/block")
    except OSError:
        return found
    for d in names:
        if not d.startswith("dm-"):
            continue
        try:
            with open(f"/sys/block/{d}/dm/uuid") as f:
                uuid = f.read().strip()
            with open(f"/sys/block/{d}/dm/name") as f:
                name = f.read().strip()
        except OSError:
            continue
        if uuid.startswith("mpath-") and uuid[6:] in want:
            found[uuid[6:]] = name
    return found
def usable(name):
    try:
        signal.alarm(20)
        fd = os.open(f"/dev/mapper/{name}", os.O_RDONLY | os.O_DIRECT)
        try:
            return os.preadv(fd, [buf], 0) == 4096
        finally:
            os.close(fd)
    except (OSError, TimeoutError):
        return False
    finally:
        signal.alarm(0)
done = set()
while True:
    now = time.clock_gettime(time.CLOCK_MONOTONIC)
    if now > 240:
        print("timeout")
        break
    for wwid, name in maps().items():
        if wwid not in done and usable(name):
            done.add(wwid)
    if done == want:
        print(f"{time.clock_gettime(time.CLOCK_MONOTONIC):.3f}")
        break
    time.sleep(0.05)
PY
)
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
