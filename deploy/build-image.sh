#!/usr/bin/env bash
# Builds the `kraken` container image (deploy/Dockerfile) from a binary built on this host.
#
#   deploy/build-image.sh [--binary PATH] [--tag TAG] [--keep-debug]
#
# Without --binary: `cargo build --release --locked -p kraken` first, and that binary is used.
# Its debug sections are left out of the image (the release profile keeps line tables: ~130 of
# its ~175 MB); the symbol table stays, so a panic's backtrace still names its functions.
# --keep-debug ships the binary as built.
# The image is FROM scratch (no base image can be pulled here): the context gets the binary,
# exactly the shared libraries `ldd` lists for it (glibc resolves DNS without extra NSS modules
# since 2.34), /bin/sh (dash) for the health check, a few files under /etc and the configs of
# deploy/config. Prints the image id on the last line.
set -euo pipefail

deploy=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$deploy/.." && pwd)

binary=""
tag="kraken:latest"
keep_debug=false
usage() { sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//' >&2; exit "${1:-2}"; }
while (($#)); do
  case $1 in
    --binary) binary=${2:?--binary needs a path}; shift 2 ;;
    --binary=*) binary=${1#*=}; shift ;;
    --tag) tag=${2:?--tag needs a name}; shift 2 ;;
    --tag=*) tag=${1#*=}; shift ;;
    --keep-debug) keep_debug=true; shift ;;
    -h | --help) usage 0 ;;
    *) echo "build-image.sh: unknown argument: $1" >&2; usage ;;
  esac
done

log() { printf '==> %s\n' "$*" >&2; }

if [ -z "$binary" ]; then
  log "cargo build --release --locked -p kraken"
  (cd "$repo" && cargo build --release --locked -p kraken)
  target=${CARGO_TARGET_DIR:-$(cd "$repo" && cargo metadata --format-version 1 --no-deps \
    | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')}
  binary=$target/release/kraken
fi
[ -x "$binary" ] || { echo "build-image.sh: no executable kraken binary at $binary" >&2; exit 1; }
command -v docker >/dev/null || { echo "build-image.sh: docker is not installed" >&2; exit 1; }

context=$(mktemp -d -t kraken-image.XXXXXX)
trap 'rm -rf "$context"' EXIT
rootfs=$context/rootfs
state=$context/state
mkdir -p "$rootfs"/{usr/local/bin,bin,etc/kraken,etc/ssl/certs,var/lib,tmp}
chmod 1777 "$rootfs/tmp"
# Copied with --chown: state/lib becomes /var/lib/kraken, state/certs /etc/kraken/certs.
mkdir -p "$state"/lib/{agent,origin,proxy,build-index,tracker,backend} "$state/certs"

if ! $keep_debug && command -v objcopy >/dev/null; then
  objcopy --strip-debug "$binary" "$rootfs/usr/local/bin/kraken"
else
  $keep_debug || log "objcopy (binutils) not found: the binary goes in with its debug sections"
  # A hard link when the file system allows it: nothing writes to it here.
  ln "$binary" "$rootfs/usr/local/bin/kraken" 2>/dev/null || cp "$binary" "$rootfs/usr/local/bin/kraken"
fi
shell=$(readlink -f /bin/sh)
case $(basename "$shell") in
  dash | busybox) cp "$shell" "$rootfs/bin/sh" ;;
  *) shell=$(command -v dash) || { echo "build-image.sh: dash is needed for /bin/sh" >&2; exit 1; }
     cp "$shell" "$rootfs/bin/sh" ;;
esac
install -m 0755 "$deploy/image/kraken-healthcheck" "$rootfs/usr/local/bin/kraken-healthcheck"
install -m 0644 "$deploy"/image/etc/{passwd,group,nsswitch.conf} "$rootfs/etc/"
install -m 0644 "$deploy"/config/*.yaml "$rootfs/etc/kraken/"
if [ -r /etc/ssl/certs/ca-certificates.crt ]; then
  install -m 0644 /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/"
else
  log "no /etc/ssl/certs/ca-certificates.crt on this host: the image trusts no public CA"
fi

# Exactly what the dynamic loader will look for, at the paths it looks: `ldd` prints
# `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` and `/lib64/ld-linux-x86-64.so.2 (0x…)`.
libraries() {
  ldd "$1" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) { print $i; break } }'
}
for program in "$binary" "$shell"; do
  if ! ldd "$program" >/dev/null 2>&1; then
    echo "build-image.sh: ldd cannot read $program (not a dynamic executable for this host?)" >&2
    exit 1
  fi
  for lib in $(libraries "$program"); do
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
  done
done
log "libraries: $(cd "$rootfs" && find lib* usr/lib* -type f 2>/dev/null | sort | tr '\n' ' ')"

cp "$deploy/Dockerfile" "$context/Dockerfile"
log "docker build -t $tag ($(du -sh "$context" | cut -f1) context)"
# The classic builder works offline; BuildKit may want to pull its frontend.
DOCKER_BUILDKIT=0 docker build --quiet --tag "$tag" "$context"
