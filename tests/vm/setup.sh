#!/usr/bin/env bash
# Installs everything the VM scenarios, the real-boot scenario (tests/boot: debootstrap,
# qemu-img), the demo and the package check need on a fresh Debian machine.
# Idempotent: a second run only checks.
#   setup.sh            the VM stack (QEMU, kernel, open-iscsi, multipath-tools, virtme-ng)
#   setup.sh --bench    also os-brick from PyPI in /opt/lunkeeper-osbrick (tests/bench.sh)
set -euo pipefail
BENCH=0
[[ ${1:-} == --bench ]] && BENCH=1

VENV=${LUNKEEPER_VNG_VENV:-/opt/lunkeeper-vng}
PKGS=(qemu-system-x86 linux-image-amd64 udev kmod open-iscsi multipath-tools sg3-utils
      lsscsi iproute2 libudev-dev pkg-config python3-venv time util-linux e2fsprogs busybox-static
      nftables lintian debootstrap qemu-utils fdisk)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  # The packages must not start services on the host: the host kernel has no SCSI anyway.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -q --no-install-recommends "${missing[@]}"
  rm -f /usr/sbin/policy-rc.d
fi

if [ ! -x "$VENV/bin/vng" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q virtme-ng
fi
OSBRICK_VENV=${LUNKEEPER_OSBRICK_VENV:-/opt/lunkeeper-osbrick}
if ((BENCH)) && ! "$OSBRICK_VENV/bin/python3" -c 'import os_brick' 2>/dev/null; then
  python3 -m venv "$OSBRICK_VENV"
  "$OSBRICK_VENV/bin/pip" install -q 'os-brick==7.1.1'
fi
echo "setup: ok ($(ls /boot/vmlinuz-*-amd64 | sort -V | tail -n1), $("$VENV/bin/vng" --version 2>&1 | head -n1))"
