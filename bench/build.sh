#!/usr/bin/env bash
# Build benchmarks, Berth beside Docker (legacy builder or BuildKit, whichever `docker build` uses)
# and Podman (buildah) where installed: a cold build, a fully cached rebuild, and a rebuild after
# editing one source file (only the steps from the COPY that reads it re-run). Medians, ms.
# Usage: bench/build.sh [runs]    (needs root; run `make release` first)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
RUNS=${1:-5}
BERTH=${BERTH:-target/release/berth}
work=$(mktemp -d /tmp/berth-bench-build.XXXXXX)
B="$BERTH --root $work/root --runroot $work/run"
cleanup() { $B ps -aq --no-trunc 2>/dev/null | xargs -r $B rm -f >/dev/null 2>&1 || true; $B network reset >/dev/null 2>&1 || true; unmount_under "$work"; rm -rf "$work"; }
trap cleanup EXIT

scripts/busybox-rootfs.sh "$work/busybox.tar"
$B import -c 'CMD ["sh"]' "$work/busybox.tar" busybox:latest >/dev/null
ctx=$work/ctx
mkdir -p "$ctx/src"
cat > "$ctx/Dockerfile" <<'DF'
FROM busybox AS build
WORKDIR /src
COPY requirements.txt .
RUN for r in $(cat requirements.txt); do mkdir -p /deps/$r && echo "$r" > /deps/$r/VERSION; done
COPY src/ ./
RUN cat *.c | wc -c > /src/app.bin

FROM busybox
COPY --from=build /deps /deps
COPY --from=build /src/app.bin /usr/local/bin/app.bin
ENV APP=1
CMD ["cat", "/usr/local/bin/app.bin"]
DF
printf 'flask\nrequests\nnumpy\n' > "$ctx/requirements.txt"
for i in $(seq 50); do head -c 20000 /dev/urandom | base64 > "$ctx/src/file$i.c"; done

ms() { elapsed_ms "$@" || { echo "failed: $*" >&2; exit 1; }; }

# measure NAME PRUNE CMD... : cold / cached / one-file-edit medians for one builder; the context is
# the last argument, $edit the file edited.
measure() {
  local name=$1 prune=$2; shift 2
  local cold=() warm=() edit_ms=()
  for i in $(seq "$RUNS"); do
    eval "$prune" >/dev/null 2>&1 || true
    cold+=("$(ms "$@")")
    warm+=("$(ms "$@")")
    echo "// edit $i $RANDOM" >> "$edit"
    edit_ms+=("$(ms "$@")")
  done
  printf '%-7s cold %7s   cached %7s   one file edited %7s\n' "$name" \
    "$(printf '%s\n' "${cold[@]}" | median)" "$(printf '%s\n' "${warm[@]}" | median)" "$(printf '%s\n' "${edit_ms[@]}" | median)"
}

docker_up() { command -v docker >/dev/null && docker info >/dev/null 2>&1; }
docker_prune="docker rmi -f bench:1; docker image prune -af; docker builder prune -af; docker import -c 'CMD [\"sh\"]' $work/busybox.tar busybox:latest"
podman_prune="podman rmi -af --ignore; podman import -c 'CMD [\"sh\"]' $work/busybox.tar docker.io/library/busybox:latest"

# all_builders TITLE CONTEXT
all_builders() {
  echo "== $1 (median of $RUNS, ms)"
  measure berth "$B builder prune -f" $B build -q -t bench:1 "$2"
  # Cold: no cache of either builder (the legacy one keeps intermediate images), busybox re-imported.
  if docker_up; then
    measure docker "$docker_prune" docker build -q -t bench:1 "$2"
    docker rmi -f bench:1 >/dev/null 2>&1 || true
  fi
  if command -v podman >/dev/null; then
    measure podman "$podman_prune" podman build --runtime runc -q -t bench:1 "$2"
  fi
}

edit=$ctx/src/file1.c
all_builders "2 stages, 6 filesystem steps, 50 source files (1.3 MB)" "$ctx"

# The issue's 10-step shape: FROM, ENV, WORKDIR, COPY, RUN, COPY, RUN, ENV, LABEL, CMD.
ctx10=$work/ctx10
mkdir -p "$ctx10"
printf 'FROM busybox\nENV A=1\nWORKDIR /app\nCOPY deps.txt .\nRUN cat deps.txt > /deps\nCOPY main.c .\nRUN wc -c main.c > /size\nENV B=2\nLABEL stage=bench\nCMD ["cat", "/size"]\n' > "$ctx10/Dockerfile"
echo flask > "$ctx10/deps.txt"; echo 'int main(){}' > "$ctx10/main.c"
edit=$ctx10/main.c
all_builders "10-step Dockerfile" "$ctx10"

# A context of 10,000 small files copied whole: transfer, hashing and copying dominate.
ctx10k=$work/ctx10k
mkdir -p "$ctx10k"
printf 'FROM busybox\nCOPY . /app\nRUN ls -R /app | wc -l\n' > "$ctx10k/Dockerfile"
for d in $(seq 100); do mkdir "$ctx10k/d$d"; for f in $(seq 100); do echo "file $d/$f" > "$ctx10k/d$d/f$f.txt"; done; done
edit=$ctx10k/d1/f1.txt
all_builders "context of 10,000 small files, COPY . /app" "$ctx10k"
