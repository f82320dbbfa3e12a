#!/bin/sh
# Builds the Debian package lunkeeper_<version>_<arch>.deb and prints its path.
#
#   packaging/build-deb.sh
#
# Needs a Rust toolchain (see rust-version in Cargo.toml), libudev-dev and pkg-config; installs
# cargo-deb with `cargo install` when it is missing. Honours CARGO_TARGET_DIR. The .deb lands
# in <target dir>/debian/.
set -eu

cd "$(dirname "$0")/.."
target_dir=${CARGO_TARGET_DIR:-target}

if ! cargo deb --version >/dev/null 2>&1; then
    echo "build-deb: installing cargo-deb" >&2
    cargo install cargo-deb --locked
fi

cargo build --release --locked --bin lunkeeper

# Man pages and completions come from the binary itself, so they cannot drift from its options.
assets="$target_dir/release/assets"
rm -rf "$assets"
mkdir -p "$assets/man" "$assets/completions"
bin="$target_dir/release/lunkeeper"
"$bin" man "$assets/man"
# Policy: man pages are installed compressed, reproducibly (no name or time stamp).
gzip -9n "$assets/man"/*.8
"$bin" completions bash >"$assets/completions/lunkeeper.bash"
"$bin" completions zsh >"$assets/completions/_lunkeeper"
"$bin" completions fish >"$assets/completions/lunkeeper.fish"

cargo deb --no-build --locked
