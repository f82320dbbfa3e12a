#!/usr/bin/env python3
"""Idle cost of a process over a window: CPU seconds, context switches, threads, memory.

    idle.py PID SECONDS VOLUMES > idle.json

Context switches are counted per thread (/proc/PID/task/TID/status) and sampled every
second, so threads that start or end inside the window (tokio's blocking pool, observe's
workers) are counted too; a thread's switches in its last second before it ended are lost.
CPU time comes from /proc/PID/stat, which keeps the time of threads that have ended.
"""
import json
import os
import sys
import time


def task_switches(pid):
    out = {}
    base = "/proc/%d/task" % pid
    for tid in os.listdir(base):
        try:
            with open("%s/%s/status" % (base, tid)) as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            out[tid] = (int(fields["voluntary_ctxt_switches"]),
                        int(fields["nonvoluntary_ctxt_switches"]))
        except (OSError, KeyError, ValueError):
            pass  # the thread ended while being read
    return out


def cpu_ticks(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


def status_kib(pid, key):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def main():
    pid, secs, volumes = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    tick = os.sysconf("SC_CLK_TCK")
    first = task_switches(pid)
    last = dict(first)
    c0 = cpu_ticks(pid)
    max_threads = len(first)
    end = time.monotonic() + secs
    while True:
        now = time.monotonic()
        if now >= end:
            break
        time.sleep(min(1.0, end - now))
        sample = task_switches(pid)
        max_threads = max(max_threads, len(sample))
        last.update(sample)
    c1 = cpu_ticks(pid)
    vol = sum(v[0] - first.get(t, (0, 0))[0] for t, v in last.items())
    nonvol = sum(v[1] - first.get(t, (0, 0))[1] for t, v in last.items())
    print(json.dumps({
        "volumes": volumes, "seconds": secs,
        "cpu_seconds": (c1 - c0) / tick,
        "voluntary_switches_per_second": vol / secs,
        "involuntary_switches_per_second": nonvol / secs,
        "wakeups_per_second": (vol + nonvol) / secs,
        "threads": len(task_switches(pid)), "max_threads": max_threads,
        "threads_seen": len(last),
        "vm_hwm_kib": status_kib(pid, "VmHWM"), "vm_rss_kib": status_kib(pid, "VmRSS"),
    }))


if __name__ == "__main__":
    main()
