#!/usr/bin/env python3
"""os-brick contender for tests/vm/bench.sh: connect_volume (or disconnect_volume) for each
volume in turn, in one process, as Nova and Cinder call it.

    osbrick.py connect|disconnect VOLUMES STATE

VOLUMES has one line per volume: "<name> <iqn> <lun> <portal> [<portal>...]".
connect writes os-brick's device_info per volume into STATE (JSON) for disconnect to use.
Prints "start_ms <epoch ms>" just before the first call, so the import of os-brick (paid
once by a long-running service) is not counted.
"""
import json
import sys
import time


def main():
    mode, volumes_file, state_file = sys.argv[1:4]
    from oslo_concurrency import lockutils
    from os_brick import privileged
    from os_brick.initiator import connector

    lockutils.set_defaults("/run/osbrick-locks")
    # Run the privileged helpers in this process: we are root, no privsep daemon.
    privileged.default.set_client_mode(False)
    conn = connector.InitiatorConnector.factory("ISCSI", None, use_multipath=True)

    volumes = []
    with open(volumes_file) as f:
        for line in f:
            fields = line.split()
            if not fields:
                continue
            name, iqn, lun, portals = fields[0], fields[1], int(fields[2]), fields[3:]
            volumes.append((name, {
                "target_iqns": [iqn] * len(portals),
                "target_portals": portals,
                "target_luns": [lun] * len(portals),
                "target_iqn": iqn,
                "target_portal": portals[0],
                "target_lun": lun,
            }))

    print("start_ms %d" % int(time.time() * 1000), flush=True)
    if mode == "connect":
        state = {}
        for name, props in volumes:
            info = conn.connect_volume(props)
            state[name] = info
            print("connected %s %s" % (name, info.get("path")), flush=True)
        with open(state_file, "w") as f:
            json.dump(state, f)
    else:
        with open(state_file) as f:
            state = json.load(f)
        for name, props in volumes:
            conn.disconnect_volume(props, state.get(name) or {})
            print("disconnected %s" % name, flush=True)


if __name__ == "__main__":
    main()
