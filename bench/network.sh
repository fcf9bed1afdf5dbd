#!/usr/bin/env bash
# Networking benchmarks (issue 3): added start latency of the default bridge over --network none,
# TCP throughput through a published port against a direct connection to the container, and name
# lookup latency with 200 containers on one network. Needs root, python3, a release build.
# Usage: bench/network.sh [runs]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
RUNS=${1:-20}
BERTH=${BERTH:-target/release/berth}
work=$(mktemp -d /tmp/berth-netbench.XXXXXX)
B="$BERTH --root $work/root --runroot $work/run"
cleanup() {
  $B ps -aq --no-trunc 2>/dev/null | xargs -r -n 50 $B rm -f >/dev/null 2>&1 || true
  $B network prune -f >/dev/null 2>&1 || true; $B network reset >/dev/null 2>&1 || true
  unmount_under "$work"; rm -rf "$work"
}
trap cleanup EXIT
scripts/busybox-rootfs.sh "$work/busybox.tar"
$B import -c 'CMD ["sh"]' "$work/busybox.tar" busybox:latest >/dev/null


echo "== start latency: run --rm busybox true (median of $RUNS, ms), alternating"
$B run --rm busybox true >/dev/null   # creates the bridge
none=(); bridge=()
for _ in $(seq "$RUNS"); do
  none+=("$(elapsed_ms $B run --rm --network none busybox true)")
  bridge+=("$(elapsed_ms $B run --rm busybox true)")
done
n=$(printf '%s\n' "${none[@]}" | median); b=$(printf '%s\n' "${bridge[@]}" | median)
echo "none: $n  bridge: $b  added: $(echo "$b - $n" | bc)"

echo "== TCP throughput, 1 GiB, one stream (MB/s, median of 3)"
$B run -d --name sink -p 127.0.0.1:0:5001 busybox sh -c 'while true; do nc -l -p 5001 >/dev/null; done' >/dev/null
port=$($B port sink 5001 | sed 's/.*://'); ip=$($B inspect -f '{{.NetworkSettings.IPAddress}}' sink)
send() {
  python3 - "$1" "$2" <<'PY'
import socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
buf = b"x" * (1 << 20)
for _ in range(50):
    try:
        s = socket.create_connection((host, port)); break
    except OSError:
        time.sleep(0.1)
t = time.time()
for _ in range(1024):
    s.sendall(buf)
s.shutdown(socket.SHUT_WR); s.recv(1); s.close()
print(int(1024 * 1048576 / (time.time() - t) / 1e6))
PY
}
direct=$(for _ in 1 2 3; do send "$ip" 5001; done | median)
published=$(for _ in 1 2 3; do send 127.0.0.1 "$port"; done | median)
echo "direct to the container: $direct  through 127.0.0.1:$port (DNAT): $published  ratio: $(echo "scale=2; $published / $direct" | bc)"
$B rm -f sink >/dev/null

echo "== name lookup with 200 containers on one network (ms per query, median of 1000)"
$B network create lookups >/dev/null
for i in $(seq 200); do echo "c$i"; done | xargs -P 8 -I{} $B run -d --name {} --network lookups busybox sleep 600 >/dev/null
gw=$($B network inspect -f '{{range .IPAM.Config}}{{.Gateway}}{{end}}' lookups 2>/dev/null || true)
[ -n "$gw" ] || gw=$($B inspect -f '{{.NetworkSettings.Gateway}}' c1)
python3 - "$gw" <<'PY'
import socket, struct, sys, time
gw = sys.argv[1]
def query(name, qid):
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\0" + struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
times = []
for i in range(1000):
    name = "c%d" % (i % 200 + 1)
    t = time.perf_counter(); s.sendto(query(name, i), (gw, 53)); data, _ = s.recvfrom(512)
    times.append((time.perf_counter() - t) * 1000)
    assert struct.unpack(">H", data[6:8])[0] == 1, name
times.sort()
print("median %.3f ms, p99 %.3f ms" % (times[500], times[990]))
PY
