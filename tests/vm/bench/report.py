#!/usr/bin/env python3
"""Turns the benchmark's raw results into a markdown table and one JSON document.

    report.py RESULTS_DIR [--date YYYY-MM-DD] [--machine TEXT]

Reads RESULTS_DIR/runs.jsonl (one object per measured phase), idle.json and versions.txt as
tests/vm/bench.sh writes them; writes RESULTS_DIR/bench.md and RESULTS_DIR/bench.json and
prints the markdown. Ratios are contender median / lunkeeper median (above 1: lunkeeper is
faster); for the floor the table also gives lunkeeper / floor, the figure the targets use.
"""
import argparse
import json
import os
import statistics
import sys

ORDER = ["lunkeeper", "floor", "iscsiadm-script", "os-brick"]
LABEL = {
    "lunkeeper": "lunkeeper apply",
    "floor": "floor (loginall / logoutall)",
    "iscsiadm-script": "plain iscsiadm script",
    "os-brick": "os-brick",
}


def load(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


def summarize(rows):
    out = {}
    for r in rows:
        key = (r["topology"], r["phase"], r["contender"])
        out.setdefault(key, []).append(r)
    summary = {}
    for (topo, phase, c), rs in out.items():
        secs = [r["seconds"] for r in rs]
        summary.setdefault(topo, {}).setdefault(phase, {})[c] = {
            "runs": len(rs),
            "failed_runs": sum(1 for r in rs if not r["ok"] or r.get("exit", 0) != 0),
            "median": statistics.median(secs),
            "min": min(secs),
            "max": max(secs),
            "seconds": secs,
            "min_paths": min((r["min_paths"] for r in rs if "min_paths" in r), default=None),
            "left_behind": sorted({r["left"] for r in rs if r.get("left")}),
        }
    for topo in summary.values():
        for phase in topo.values():
            base = phase.get("lunkeeper")
            for c, s in phase.items():
                s["ratio_to_lunkeeper"] = (
                    round(s["median"] / base["median"], 2) if base and base["median"] > 0 else None)
    return summary


def markdown(summary, idle, meta):
    lines = []
    if meta.get("date") or meta.get("machine"):
        lines.append("Measured %s on %s." % (meta.get("date", "?"), meta.get("machine", "?")))
    if meta.get("versions"):
        lines.append("Guest: %s." % "; ".join(meta["versions"]))
    if len(lines):
        lines.append("")
    for topo in sorted(summary):
        for phase in ("attach", "detach"):
            data = summary[topo].get(phase)
            if not data:
                continue
            lines.append("| %s %s | runs | median s | min–max s | × lunkeeper | notes |" % (topo, phase))
            lines.append("|---|---:|---:|---:|---:|---|")
            for c in sorted(data, key=lambda c: ORDER.index(c) if c in ORDER else 99):
                s = data[c]
                notes = []
                if s["failed_runs"]:
                    notes.append("%d run(s) failed" % s["failed_runs"])
                if phase == "attach" and s["min_paths"] is not None and s["min_paths"] < 2:
                    notes.append("a map had %d path(s) when usable" % s["min_paths"])
                if phase == "detach" and s["left_behind"]:
                    notes.append("left: " + "; ".join(s["left_behind"]))
                ratio = s["ratio_to_lunkeeper"]
                lines.append("| %s | %d | %.1f | %.1f–%.1f | %s | %s |" % (
                    LABEL.get(c, c), s["runs"], s["median"], s["min"], s["max"],
                    "%.2f" % ratio if ratio is not None else "–", ", ".join(notes)))
            base, floor = data.get("lunkeeper"), data.get("floor")
            if base and floor and floor["median"] > 0:
                lines.append("")
                lines.append("lunkeeper / floor: %.2f" % (base["median"] / floor["median"]))
            lines.append("")
    if idle:
        lines.append("Idle, %d volumes attached under `lunkeeper run`, %d s: %.3f CPU s, "
                     "%.3f voluntary + %.3f involuntary context switches/s (%.3f wakeups/s), "
                     "%d thread(s), VmHWM %.1f MiB, VmRSS %.1f MiB." % (
                         idle["volumes"], idle["seconds"], idle["cpu_seconds"],
                         idle["voluntary_switches_per_second"],
                         idle["involuntary_switches_per_second"], idle["wakeups_per_second"],
                         idle["threads"], idle["vm_hwm_kib"] / 1024, idle["vm_rss_kib"] / 1024))
        lines.append("")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--date")
    ap.add_argument("--machine")
    a = ap.parse_args()
    runs = os.path.join(a.dir, "runs.jsonl")
    if not os.path.exists(runs) or os.path.getsize(runs) == 0:
        print("report.py: no results in %s" % runs, file=sys.stderr)
        return 1
    rows = load(runs)
    idle_path = os.path.join(a.dir, "idle.json")
    idle = json.load(open(idle_path)) if os.path.exists(idle_path) else None
    versions_path = os.path.join(a.dir, "versions.txt")
    versions = open(versions_path).read().splitlines() if os.path.exists(versions_path) else []
    meta = {k: v for k, v in (("date", a.date), ("machine", a.machine)) if v}
    summary = summarize(rows)
    doc = {"meta": dict(meta, versions=versions), "summary": summary, "idle": idle, "runs": rows}
    with open(os.path.join(a.dir, "bench.json"), "w") as f:
        json.dump(doc, f, indent=1)
    md = markdown(summary, idle, dict(meta, versions=versions))
    with open(os.path.join(a.dir, "bench.md"), "w") as f:
        f.write(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
