#!/usr/bin/env bash
# Guest side of the demo (tests/demo.sh): one target with two LUNs on two portals, two volumes.
. "$(dirname "${BASH_SOURCE[0]}")/guest-lib.sh"
LK=${LUNKEEPER_BIN:?}
lk_boot_stack >/dev/null
IQN=iqn.2026-11.demo.lunkeeper:array1
lk_target demo "$IQN" --luns "0 7" --portals "127.0.0.1:3260 127.0.0.2:3260" >/dev/null
mkdir -p /etc/lunkeeper
cat >/etc/lunkeeper/volumes.toml <<TOML
[[volume]]
name = "db-data"
target = "$IQN"
portals = ["127.0.0.1:3260", "127.0.0.2:3260"]
lun = 0

[[volume]]
name = "scratch"
target = "$IQN"
portals = ["127.0.0.1:3260"]
lun = 7
multipath = false
TOML
show() {
  echo "===== \$ $*"
  "$@" 2>&1 || echo "[exit $?]"
}
show cat /etc/lunkeeper/volumes.toml
show "$LK" apply
show "$LK" status
show "$LK" status --json
show "$LK" apply
echo "===== end"
lk_check "demo: db-data ready" bash -c "$LK status --json | grep -q '\"state\": \"ready\"'"
lk_finish >/dev/null
