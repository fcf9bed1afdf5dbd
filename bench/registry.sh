#!/usr/bin/env bash
# Registry benchmarks on a loopback registry (Debian's docker-registry): pull of a ~200 MB image of 6
# gzip layers until it is unpacked and ready to run, push of it to an empty registry, and re-push of the
# unchanged image; Berth beside `docker pull/push` (dockerd running) and `skopeo copy` (to and from a
# local dir: no unpacking) where installed. Medians, ms, and ratios to Berth.
# Usage: bench/registry.sh [runs]    (needs root; run `make release` first)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
RUNS=${1:-3}
BERTH=${BERTH:-target/release/berth}
work=$(mktemp -d /tmp/berth-bench-registry.XXXXXX)
cleanup() {
  # (start_registry runs in command substitutions, subshells: the PIDs go through a file.)
  [ -f "$work/pids" ] && xargs -r kill < "$work/pids" 2>/dev/null || true
  [ -f "$work/docker-images" ] && xargs -r docker rmi -f < "$work/docker-images" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

ms() { elapsed_ms "$@" || { echo "failed: $*" >&2; exit 1; }; }
docker_up() { command -v docker >/dev/null && docker info >/dev/null 2>&1; }

# start_registry NAME: a registry with its own storage on a free loopback port; prints host:port.
start_registry() {
  local dir=$work/registry-$1 port
  mkdir -p "$dir"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  printf 'version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' \
    "$dir/storage" "$port" > "$dir/config.yml"
  /usr/bin/docker-registry serve "$dir/config.yml" >"$dir/log" 2>&1 &
  echo $! >> "$work/pids"
  for _ in $(seq 200); do
    (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && { echo "127.0.0.1:$port"; return; }
    sleep 0.05
  done
  echo "registry did not start: $(cat "$dir/log")" >&2; exit 1
}

# The image: an OCI layout with busybox and five 40 MB layers of incompressible data, gzip'd.
layout=$work/layout
mkdir -p "$layout/blobs/sha256"
put_blob() { local d; d=$(sha256sum "$1" | cut -d' ' -f1); mv "$1" "$layout/blobs/sha256/$d"; echo "$d"; }
scripts/busybox-rootfs.sh "$work/layer0.tar"
diff_ids=() layers=()
for i in 0 1 2 3 4 5; do
  if [ "$i" -gt 0 ]; then
    mkdir -p "$work/l$i/data"
    head -c 40M /dev/urandom > "$work/l$i/data/blob$i"
    tar -C "$work/l$i" -cf "$work/layer$i.tar" data
  fi
  diff_ids+=("sha256:$(sha256sum "$work/layer$i.tar" | cut -d' ' -f1)")
  gzip -1 -n "$work/layer$i.tar"
  size=$(stat -c %s "$work/layer$i.tar.gz")
  layers+=("{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$(put_blob "$work/layer$i.tar.gz")\",\"size\":$size}")
done
ids=$(printf '"%s",' "${diff_ids[@]}")
printf '{"architecture":"amd64","os":"linux","config":{"Cmd":["sh"]},"rootfs":{"type":"layers","diff_ids":[%s]}}' "${ids%,}" > "$work/config.json"
csize=$(stat -c %s "$work/config.json")
cdigest=$(put_blob "$work/config.json")
ls=$(printf '%s,' "${layers[@]}")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[%s]}' \
  "$cdigest" "$csize" "${ls%,}" > "$work/manifest.json"
msize=$(stat -c %s "$work/manifest.json")
mdigest=$(put_blob "$work/manifest.json")
printf '{"imageLayoutVersion":"1.0.0"}' > "$layout/oci-layout"
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"1"}}]}' \
  "$mdigest" "$msize" > "$layout/index.json"
source=$(start_registry source)
skopeo copy -q --dest-tls-verify=false "oci:$layout:1" "docker://$source/bench/big:1"
echo "image: $(du -sm "$layout/blobs" | cut -f1) MB in 6 gzip layers, on $source"

report() { # NAME BERTH_MS OTHER_MS...
  printf '%-34s berth %7s' "$1" "$2"; shift 2
  while [ $# -gt 0 ]; do
    printf '   %s %7s (berth %sx)' "$1" "$2" "$(awk -v b="$BERTH_MS" -v o="$2" 'BEGIN {printf "%.2f", b/o}')"
    shift 2
  done
  echo
}

# Pull: a fresh store each time, so every layer is downloaded and unpacked.
b_pull=() d_pull=() s_copy=()
for i in $(seq "$RUNS"); do
  rm -rf "$work/b"; B="$BERTH --root $work/b/root --runroot $work/b/run"
  b_pull+=("$(ms $B pull "$source/bench/big:1")")
  if docker_up; then
    docker rmi -f "$source/bench/big:1" >/dev/null 2>&1 || true
    d_pull+=("$(ms docker pull "$source/bench/big:1")")
  fi
  if command -v skopeo >/dev/null; then
    rm -rf "$work/dir"
    s_copy+=("$(ms skopeo copy -q --src-tls-verify=false "docker://$source/bench/big:1" "dir:$work/dir")")
  fi
done
BERTH_MS=$(printf '%s\n' "${b_pull[@]}" | median)
others=()
[ ${#d_pull[@]} -gt 0 ] && others+=(docker "$(printf '%s\n' "${d_pull[@]}" | median)")
[ ${#s_copy[@]} -gt 0 ] && others+=("skopeo(dir)" "$(printf '%s\n' "${s_copy[@]}" | median)")
report "pull (median of $RUNS, ms)" "$BERTH_MS" "${others[@]}"

# Push: to an empty registry each time (no blob there to skip or mount).
b_push=() d_push=() s_push=() b_repush=()
for i in $(seq "$RUNS"); do
  target=$(start_registry "push-b$i")
  $B tag "$source/bench/big:1" "$target/bench/big:1"
  b_push+=("$(ms $B push "$target/bench/big:1")")
  b_repush+=("$(ms $B push "$target/bench/big:1")")
  if docker_up; then
    target=$(start_registry "push-d$i")
    docker tag "$source/bench/big:1" "$target/bench/big:1"
    echo "$target/bench/big:1" >> "$work/docker-images"
    d_push+=("$(ms docker push "$target/bench/big:1")")
  fi
  if command -v skopeo >/dev/null; then
    target=$(start_registry "push-s$i")
    s_push+=("$(ms skopeo copy -q --dest-tls-verify=false "dir:$work/dir" "docker://$target/bench/big:1")")
  fi
done
BERTH_MS=$(printf '%s\n' "${b_push[@]}" | median)
others=()
[ ${#d_push[@]} -gt 0 ] && others+=(docker "$(printf '%s\n' "${d_push[@]}" | median)")
[ ${#s_push[@]} -gt 0 ] && others+=("skopeo(dir)" "$(printf '%s\n' "${s_push[@]}" | median)")
report "push to an empty registry" "$BERTH_MS" "${others[@]}"
BERTH_MS=$(printf '%s\n' "${b_repush[@]}" | median)
report "re-push, unchanged" "$BERTH_MS"
docker_up && docker rmi -f "$source/bench/big:1" >/dev/null 2>&1 || true
