"""Stands in for systemd's notify socket: logs each sd_notify datagram with a timestamp."""
import os
import socket
import sys
import time

path, log = sys.argv[1], sys.argv[2]
try:
    os.unlink(path)
except FileNotFoundError:
    pass
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
with open(log, "a", buffering=1) as out:
    while True:
        msg = s.recv(65536).decode(errors="replace")
        for line in msg.splitlines():
            out.write(f"{time.time():.3f} {line}\n")
