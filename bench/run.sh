#!/usr/bin/env bash
# Benchmarks of the engine core, Berth beside Docker/Podman where installed. Medians of several runs.
# Usage: bench/run.sh [runs]    (needs root; builds nothing: run `make release` first)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
RUNS=${1:-20}
BERTH=${BERTH:-target/release/berth}
work=$(mktemp -d /tmp/berth-bench.XXXXXX)
B="$BERTH --root $work/root --runroot $work/run"
cleanup() { $B ps -aq --no-trunc 2>/dev/null | xargs -r $B rm -f >/dev/null 2>&1 || true; $B network reset >/dev/null 2>&1 || true; unmount_under "$work"; rm -rf "$work"; }
trap cleanup EXIT

scripts/busybox-rootfs.sh "$work/busybox.tar"
$B import -c 'CMD ["sh"]' "$work/busybox.tar" busybox:latest >/dev/null

time_median() { for _ in $(seq "$RUNS"); do elapsed_ms "$@"; done | median; }

echo "== run --rm busybox true (median of $RUNS, ms)"
berth_run=$(time_median $B run --rm busybox true)
echo "berth:  $berth_run"
if command -v docker >/dev/null && docker info >/dev/null 2>&1 && docker image inspect busybox >/dev/null 2>&1; then
  docker_run=$(time_median docker run --rm busybox true); echo "docker: $docker_run  (ratio docker/berth: $(echo "scale=1; $docker_run/$berth_run" | bc))"
fi
if command -v podman >/dev/null && podman image exists busybox 2>/dev/null; then
  podman_run=$(time_median podman run --rm busybox true); echo "podman: $podman_run  (ratio podman/berth: $(echo "scale=1; $podman_run/$berth_run" | bc))"
fi

echo "== 100 parallel run -d (s until all running)"
s=$(date +%s%N)
for i in $(seq 100); do $B run -d --name p$i busybox sleep 600 >/dev/null & done; wait
e=$(date +%s%N)
running=$($B ps -q | wc -l)
echo "berth: $(( (e - s) / 1000000 )) ms, running: $running/100"

echo "== monitor memory per running container (KiB, median over 100 monitors)"
# Steady state: a monitor gives back the memory it needed to create its container a second after start.
sleep 2
monitors=()
for id in $($B ps -q --no-trunc); do
  pid=$($B inspect -f '{{.State.Pid}}' "$id"); monitors+=("$(awk '{print $4}' /proc/$pid/stat)")
done
echo "RSS: $(for m in "${monitors[@]}"; do awk '/^Rss/ {print $2}' /proc/$m/smaps_rollup; done | median)"
echo "PSS (shared code split among monitors): $(for m in "${monitors[@]}"; do awk '/^Pss:/ {print $2}' /proc/$m/smaps_rollup; done | median)"
echo "private (anon + dirty): $(for m in "${monitors[@]}"; do awk '/^Private_Dirty/ {print $2}' /proc/$m/smaps_rollup; done | median)"

echo "== ps -a with N containers (ms, median of 10)"
for i in $(seq 101 1000); do echo "c$i"; done | xargs -P 8 -I{} $B create --name {} busybox true >/dev/null
echo "containers: $($B ps -aq | wc -l)"
RUNS=10 time_median $B ps -a | sed 's/^/berth ps -a: /'
$B ps -aq --no-trunc | xargs -P 4 -n 50 $B rm -f >/dev/null

LOG_RUNS=${LOG_RUNS:-3}
echo "== 1 GiB of 99-byte lines to stdout, logged (MB/s end to end: run to return; median of $LOG_RUNS)"
# The container makes 1 MiB of lines once (in its /dev/shm) and has one cat send it 1024 times
# (sendfile): a producer that costs next to nothing, so the figure is the logging path's.
line=$(printf 'x%.0s' $(seq 98))
per_chunk=10600 chunks=1024
bytes=$(( per_chunk * 99 * chunks )) records=$(( per_chunk * chunks ))
producer="yes $line | head -n $per_chunk > /dev/shm/chunk; set --; i=0; while [ \$i -lt $chunks ]; do set -- \"\$@\" /dev/shm/chunk; i=\$((i+1)); done; cat \"\$@\""
# One logged GiB: prints "MB/s records".
berth_log() {
  local s e id n
  s=$(date +%s%N); $B run --name logger busybox sh -c "$producer" >/dev/null; e=$(date +%s%N)
  id=$($B inspect -f '{{.Id}}' logger); n=$(wc -l < "$work/root/containers/$id/$id-json.log")
  $B rm logger >/dev/null
  echo "$(( bytes / ((e - s) / 1000) )) $n"
}
docker_log() {
  local s e n
  s=$(date +%s%N); docker run --name berth-bench-logger busybox sh -c "$producer" >/dev/null; e=$(date +%s%N)
  n=$(wc -l < "$(docker inspect -f '{{.LogPath}}' berth-bench-logger)")
  docker rm berth-bench-logger >/dev/null
  echo "$(( bytes / ((e - s) / 1000) )) $n"
}
log_median() {
  local results; results=$(for _ in $(seq "$LOG_RUNS"); do "$1"; done)
  echo "$(echo "$results" | awk '{print $1}' | median) MB/s (runs: $(echo "$results" | awk '{print $1}' | tr '\n' ' ')), records per run: $(echo "$results" | awk '{print $2}' | sort -u | tr '\n' ' ')(expected $records)"
}
berth_logged=$(log_median berth_log); echo "berth:  $berth_logged"
if [ -n "${docker_run:-}" ]; then
  docker_logged=$(log_median docker_log); echo "docker: $docker_logged  (ratio berth/docker: $(echo "scale=1; ${berth_logged%% *}/${docker_logged%% *}" | bc))"
fi
# The monitor's own cost: its CPU time for the GiB (utime+stime, sampled until it exits).
$B run -d --name logger2 busybox sh -c "sleep 0.5; $producer" >/dev/null
mon=$(pgrep -f "berth-monitor .*$($B inspect -f '{{.Id}}' logger2)")
ticks=0
while t=$(awk '{print $14 + $15}' /proc/"$mon"/stat 2>/dev/null); do ticks=$t; sleep 0.1; done
hz=$(getconf CLK_TCK)
echo "monitor CPU for the GiB: $(( ticks * 1000 / hz )) ms => $(( bytes * hz / 1000 / (ticks > 0 ? ticks : 1) / 1000 )) MB/s of one core"
$B rm logger2 >/dev/null
# A common producer, `yes | head -c`: busybox's head copies byte by byte, so there the producer is
# the bottleneck, not the logging (compare it alone, below).
s=$(date +%s%N); $B run --name logger3 busybox sh -c "yes $line | head -c 1073741824" >/dev/null; e=$(date +%s%N)
echo "with yes | head -c 1073741824 as the producer: $(( 1073741824 / ((e - s) / 1000) )) MB/s end to end"
$B rm logger3 >/dev/null
s=$(date +%s%N); sh -c "busybox yes $line | busybox head -c 1073741824" >/dev/null; e=$(date +%s%N)
echo "that producer alone, on the host to /dev/null: $(( 1073741824 / ((e - s) / 1000) )) MB/s"
