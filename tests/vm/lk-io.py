"""Checksummed block I/O through a device, for the fault scenarios (see guest-lib.sh lk_io_*).

  lk-io.py write DEV DIR [SLOTS [PAUSE]]   write until DIR/stop exists, then DIR/acks.json
  lk-io.py verify DEV DIR          read every acknowledged block back; exit 1 if one is lost or bad

The writer writes 4 KiB blocks with O_DIRECT, each followed by fsync, in slots 0..SLOTS-1 in
turn, pausing PAUSE seconds (default 0.02) after each so that the writer does not starve udev,
multipathd and the target of CPU in an emulated guest. A block holds a magic, its sequence number, its slot and a SHA-256 of all that plus a
payload derived from the sequence number. A write is *acknowledged* when both pwrite and fsync
returned; its sequence number is then the newest one its slot must hold. A failed write is
counted as an I/O error, and the block may or may not have landed (both are accepted). Every
16th write the writer reads back one acknowledged slot (the reader running across the fault).
DIR/progress is rewritten about once a second: "acked errors lost corrupt max_latency_s".
"""
import hashlib
import json
import mmap
import os
import random
import struct
import sys
import time

BS = 4096
MAGIC = b"LKIO"
HEADER = struct.Struct("<4sQQd")  # magic, seq, slot, wall time


def make_block(buf, seq, slot):
    head = HEADER.pack(MAGIC, seq, slot, time.time())
    seed = hashlib.sha256(struct.pack("<Q", seq)).digest()
    body = head + seed * ((BS - 32 - len(head)) // 32)
    body += bytes(BS - 32 - len(body))
    buf[0:BS - 32] = body
    buf[BS - 32:BS] = hashlib.sha256(body).digest()


def parse_block(data):
    """(seq, slot) of a valid block, or None if it holds no block of ours, or "corrupt"."""
    if data[0:4] != MAGIC:
        return None
    if hashlib.sha256(data[0:BS - 32]).digest() != data[BS - 32:BS]:
        return "corrupt"
    _, seq, slot, _ = HEADER.unpack_from(data, 0)
    seed = hashlib.sha256(struct.pack("<Q", seq)).digest()
    if data[HEADER.size:HEADER.size + 32] != seed:
        return "corrupt"
    return seq, slot


def judge(found, slot, acked, unacked):
    """'ok', 'lost' or 'corrupt' for what a slot holds given its newest acknowledged write."""
    if found == "corrupt":
        return "corrupt"
    if found is None:
        return "lost"
    seq, s = found
    if s != slot or (seq - 1) % SLOTS_OF[0] != slot:
        return "corrupt"
    if seq == acked or (seq > acked and seq in unacked):
        return "ok"
    return "lost" if seq < acked else "corrupt"


SLOTS_OF = [1]


def read_block(fd, buf, slot):
    n = os.preadv(fd, [buf], slot * BS)
    if n != BS:
        raise OSError(f"short read {n}")
    return bytes(buf)


def write(dev, d, slots, pause):
    SLOTS_OF[0] = slots
    fd = os.open(dev, os.O_RDWR | os.O_DIRECT)
    wbuf = mmap.mmap(-1, BS)
    rbuf = mmap.mmap(-1, BS)
    acked = {}  # slot -> newest acknowledged seq
    unacked = set()
    errors = []
    lost = corrupt = 0
    reads = 0
    max_lat = 0.0
    max_lat_at = 0.0
    t_start = time.time()
    last_progress = 0.0
    seq = 0
    rng = random.Random(1)
    stop = os.path.join(d, "stop")
    while not os.path.exists(stop):
        seq += 1
        slot = (seq - 1) % slots
        make_block(wbuf, seq, slot)
        t0 = time.time()
        try:
            os.pwrite(fd, wbuf, slot * BS)
            os.fsync(fd)
            acked[slot] = seq
        except OSError as e:
            unacked.add(seq)
            errors.append({"seq": seq, "at": t0, "error": str(e)})
            time.sleep(0.1)
        lat = time.time() - t0
        if lat > max_lat:
            max_lat, max_lat_at = lat, t0
        if seq % 16 == 0 and acked:
            probe = rng.choice(list(acked))
            try:
                verdict = judge(parse_block(read_block(fd, rbuf, probe)), probe, acked[probe], unacked)
                reads += 1
                if verdict == "lost":
                    lost += 1
                elif verdict == "corrupt":
                    corrupt += 1
            except OSError as e:
                errors.append({"read_slot": probe, "at": time.time(), "error": str(e)})
        time.sleep(pause)
        now = time.time()
        if now - last_progress >= 1.0:
            last_progress = now
            with open(os.path.join(d, "progress.tmp"), "w") as f:
                f.write(f"{seq - len(unacked)} {len(errors)} {lost} {corrupt} {max_lat:.3f}\n")
            os.replace(os.path.join(d, "progress.tmp"), os.path.join(d, "progress"))
    os.close(fd)
    result = {
        "dev": dev, "slots": slots, "writes": seq, "acked": seq - len(unacked),
        "errors": errors, "unacked": sorted(unacked), "online_reads": reads,
        "online_lost": lost, "online_corrupt": corrupt, "max_latency_s": round(max_lat, 3),
        "max_latency_at": max_lat_at, "seconds": round(time.time() - t_start, 1),
        "newest": {str(k): v for k, v in acked.items()},
    }
    with open(os.path.join(d, "acks.tmp"), "w") as f:
        json.dump(result, f)
    os.replace(os.path.join(d, "acks.tmp"), os.path.join(d, "acks.json"))


def verify(dev, d):
    r = json.load(open(os.path.join(d, "acks.json")))
    SLOTS_OF[0] = r["slots"]
    unacked = set(r["unacked"])
    fd = os.open(dev, os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, BS)
    counts = {"ok": 0, "lost": 0, "corrupt": 0}
    bad = []
    for slot_s, seq in r["newest"].items():
        slot = int(slot_s)
        v = judge(parse_block(read_block(fd, buf, slot)), slot, seq, unacked)
        counts[v] += 1
        if v != "ok" and len(bad) < 10:
            bad.append((slot, seq, v))
    os.close(fd)
    print(f"{dev}: {r['writes']} writes in {r['seconds']} s, {r['acked']} acknowledged, "
          f"{len(r['errors'])} I/O errors, longest write {r['max_latency_s']} s; "
          f"read back {len(r['newest'])} slots: {counts['ok']} ok, {counts['lost']} lost, "
          f"{counts['corrupt']} corrupt; online reads {r['online_reads']}: "
          f"{r['online_lost']} lost, {r['online_corrupt']} corrupt")
    for b in bad:
        print(f"  slot {b[0]} newest acknowledged seq {b[1]}: {b[2]}")
    for e in r["errors"][:5]:
        print(f"  I/O error: {e}")
    ok = counts["lost"] == 0 and counts["corrupt"] == 0 and r["online_lost"] == 0 \
        and r["online_corrupt"] == 0 and r["acked"] > 0
    return 0 if ok else 1


if __name__ == "__main__":
    if sys.argv[1] == "write":
        write(sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 2048,
              float(sys.argv[5]) if len(sys.argv) > 5 else 0.02)
    elif sys.argv[1] == "verify":
        sys.exit(verify(sys.argv[2], sys.argv[3]))
    else:
        sys.exit(f"usage: {sys.argv[0]} write|verify DEV DIR [SLOTS]")
