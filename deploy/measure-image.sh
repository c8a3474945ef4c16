#!/usr/bin/env bash
# Size of the `kraken` image and how fast each component in it starts: from `docker start` to the
# first `kraken health` that answers SERVING (deploy/README.md records the figures).
#
#   deploy/measure-image.sh [--tag TAG] [--runs N]
#
# Each component runs alone, from its deploy/config file, with a fresh PKI (`kraken certs` on
# the host, with the binary copied out of the image) and its gRPC port published on 127.0.0.1;
# the host probes that port every 10 ms. Containers and the PKI are removed at the end.
set -euo pipefail

tag="kraken:latest"
runs=5
while (($#)); do
  case $1 in
    --tag) tag=${2:?--tag needs a name}; shift 2 ;;
    --runs) runs=${2:?--runs needs a number}; shift 2 ;;
    *) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
  esac
done

deploy=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d -t kraken-measure.XXXXXX)
name=kraken-measure-$$
cleanup() {
  docker ps -aq --filter "name=^$name-" | xargs -r docker rm -f >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

size=$(docker image inspect --format '{{.Size}}' "$tag")
echo "image $tag: $size bytes ($(awk -v s="$size" 'BEGIN { printf "%.1f MB", s / 1e6 }'))"

# The very binary in the image, to make the PKI and probe with.
holder=$(docker create --name "$name-holder" "$tag")
docker cp "$holder:/usr/local/bin/kraken" "$work/kraken" >/dev/null
"$work/kraken" certs --out "$work/certs" >/dev/null
# The container runs as 65532: let it read the (throwaway) keys.
chmod a+r "$work"/certs/*

now_ms() { echo $(($(date +%s%N) / 1000000)); }

measure() { # role port run
  local role=$1 port=$2 id addr start started ready
  id=$(docker create --name "$name-$role-$3" -e KRAKEN_ROLE="$role" -e ORIGIN_NAME=origin1:15002 \
    -v "$work/certs:/etc/kraken/certs:ro" -v "$deploy/dev.htpasswd:/etc/kraken/htpasswd:ro" \
    -p "127.0.0.1::$port" "$tag" "$role" --config "/etc/kraken/$role.yaml")
  start=$(now_ms)
  docker start "$id" >/dev/null
  started=$(now_ms)
  addr=$(docker port "$id" "$port/tcp" | head -1)
  until "$work/kraken" health "$addr" --role "$role" --pki "$work/certs" --timeout 1s >/dev/null 2>&1; do
    if [ "$(docker inspect --format '{{.State.Running}}' "$id")" != true ]; then
      echo "$role exited:" >&2; docker logs "$id" 2>&1 | tail -20 >&2; exit 1
    fi
    if (($(now_ms) - start > 60000)); then
      echo "$role not serving after 60 s" >&2; docker logs "$id" 2>&1 | tail -20 >&2; exit 1
    fi
    sleep 0.01
  done
  ready=$(now_ms)
  # And how fast it stops: `docker stop` returns once it has exited (status 0 expected).
  local stop_start stopped code
  stop_start=$(now_ms)
  docker stop "$id" >/dev/null
  stopped=$(now_ms)
  code=$(docker inspect --format '{{.State.ExitCode}}' "$id")
  docker rm "$id" >/dev/null
  echo "$((ready - start)) $((started - start)) $((stopped - stop_start)) $code"
}

# Not the agent: its gRPC port listens on the container's loopback only (agent.yaml), out of
# the host's reach.
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
echo "medians of $runs runs, in ms:"
printf '%-12s %14s %22s %15s  %s\n' component "start→SERVING" "(docker start returns)" "docker stop" "exit codes"
for entry in tracker:15003 origin:15002 build-index:15004 proxy:15005; do
  role=${entry%%:*} port=${entry##*:}
  ready=() started=() stops=() codes=()
  for ((i = 0; i < runs; i++)); do
    result=$(measure "$role" "$port" "$i")
    read -r ready_ms started_ms stop_ms code <<<"$result"
    ready+=("$ready_ms") started+=("$started_ms") stops+=("$stop_ms") codes+=("$code")
  done
  printf '%-12s %14s %22s %15s  %s\n' "$role" "$(median "${ready[@]}")" \
    "$(median "${started[@]}")" "$(median "${stops[@]}")" "${codes[*]}"
done
