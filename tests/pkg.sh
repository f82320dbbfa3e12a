#!/usr/bin/env bash
# The Debian package: builds it with packaging/build-deb.sh, runs lintian on it (any error
# fails) and checks what it holds and how its maintainer scripts treat the daemon. Inspects the
# .deb only (dpkg-deb); it never installs it, so it never starts a daemon on this machine.
# Needs lintian (apt-get install -y lintian).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

passed=0
failed=0
check() { # check NAME COMMAND...: counts and reports one check
  local name=$1
  shift
  if "$@"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    echo "FAIL: $name"
  fi
}

target_dir=${CARGO_TARGET_DIR:-target}
if ! build_log=$(packaging/build-deb.sh 2>&1); then
  echo "$build_log" | tail -20
  echo "pkg: 0 passed, 1 failed (the package did not build)"
  exit 1
fi
version=$(cargo metadata --no-deps --format-version 1 |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["packages"][0]["version"])')
arch=$(dpkg --print-architecture)
deb="$target_dir/debian/lunkeeper_${version}-1_${arch}.deb"
check "the .deb is named lunkeeper_<version>_<arch>.deb ($deb)" test -f "$deb"
[[ -f $deb ]] || { echo "pkg: $passed passed, $failed failed"; exit 1; }

echo "== lintian"
if command -v lintian >/dev/null; then
  lintian_out=$(lintian --allow-root "$deb" 2>&1)
  echo "${lintian_out:-(nothing to report)}"
  check "lintian reports no errors" bash -c '! grep -q "^E:" <<<"$1"' _ "$lintian_out"
else
  check "lintian is installed" false
fi

echo "== contents"
contents=$(dpkg-deb --contents "$deb" | awk '{print $NF}' | sed 's|^\./|/|')
has() { grep -qx "$1" <<<"$contents"; }
for f in \
  /usr/sbin/lunkeeper \
  /usr/lib/udev/rules.d/90-lunkeeper.rules \
  /etc/lunkeeper/volumes.toml \
  /usr/share/doc/lunkeeper/examples/volumes.example.toml \
  /usr/share/doc/lunkeeper/copyright \
  /usr/share/doc/lunkeeper/changelog.Debian.gz \
  /usr/share/man/man8/lunkeeper.8.gz \
  /usr/share/man/man8/lunkeeper-validate.8.gz \
  /usr/share/man/man8/lunkeeper-plan.8.gz \
  /usr/share/man/man8/lunkeeper-apply.8.gz \
  /usr/share/man/man8/lunkeeper-status.8.gz \
  /usr/share/man/man8/lunkeeper-run.8.gz \
  /usr/share/man/man5/lunkeeper-volumes.toml.5.gz \
  /usr/share/bash-completion/completions/lunkeeper \
  /usr/share/zsh/vendor-completions/_lunkeeper \
  /usr/share/fish/vendor_completions.d/lunkeeper.fish; do
  check "contains $f" has "$f"
done
unit=$(grep -E '/lib/systemd/system/lunkeeper\.service$' <<<"$contents")
check "contains the systemd unit" test -n "$unit"
check "ships no man page of the hidden man/completions commands" \
  bash -c '! grep -qE "lunkeeper-(man|completions|help)\.8" <<<"$1"' _ "$contents"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dpkg-deb --raw-extract "$deb" "$work/root"
ctl=$work/root/DEBIAN

echo "== control and maintainer scripts"
check "depends on open-iscsi" grep -qE '^Depends:.*\bopen-iscsi\b' "$ctl/control"
check "depends on multipath-tools" grep -qE '^Depends:.*\bmultipath-tools\b' "$ctl/control"
check "depends on dmsetup (partition maps are removed with it)" grep -qE '^Depends:.*\bdmsetup\b' "$ctl/control"
check "/etc/lunkeeper/volumes.toml is a conffile" grep -qx /etc/lunkeeper/volumes.toml "$ctl/conffiles"
check "the packaged file is accepted and declares no volumes" \
  bash -c '"$1" validate --config "$2" | grep -q "no volumes declared"' _ \
  "$work/root/usr/sbin/lunkeeper" "$work/root/etc/lunkeeper/volumes.toml"
check "an empty file is still refused (exit 2)" \
  bash -c ': >"$2/empty.toml"; "$1" validate --config "$2/empty.toml" 2>/dev/null; [[ $? == 2 ]]' _ \
  "$work/root/usr/sbin/lunkeeper" "$work"
check "the unit has no ExecStop (stopping never detaches)" \
  bash -c '! grep -q "^ExecStop" "$1"' _ "$work/root$unit"
check "postinst enables the unit" grep -q 'deb-systemd-helper enable' "$ctl/postinst"
check "postinst starts it on install and restarts it on upgrade" \
  bash -c 'grep -q "_dh_action=restart" "$1" && grep -q "_dh_action=start" "$1"' _ "$ctl/postinst"
check "prerm stops it only on remove, not on upgrade" \
  bash -c 'grep -q "\"\$1\" = remove" "$1" && grep -q "deb-systemd-invoke stop" "$1"' _ "$ctl/prerm"
check "postrm purge removes /var/lib/lunkeeper and /run/lunkeeper" \
  bash -c 'grep -q "rm -rf /var/lib/lunkeeper /run/lunkeeper" "$1"' _ "$ctl/postrm"
check "the binary runs" "$work/root/usr/sbin/lunkeeper" --version

echo "pkg: $passed passed, $failed failed"
((failed == 0))
