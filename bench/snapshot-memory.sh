#!/usr/bin/env bash
# Peak memory (VmHWM) of Skiff members that take and install snapshots of a large state.
#
#   bench/snapshot-memory.sh [SKIFF_BINARY]       # default: target/release/skiff (built here)
#
# Starts 3 members with --snapshot-count 5000, stops member 3, loads about VALUES x 4 KiB of
# distinct keys through member 1 (so the leader snapshots several times), restarts member 3
# (it is far behind a compacted log, so it gets the leader's snapshot) and prints each
# member's peak resident memory and the snapshot size. Environment: VALUES (default 60000),
# BASE_PORT (default 41379).
set -euo pipefail

cd "$(dirname "$0")/.."
SKIFF=${1:-}
if [ -z "$SKIFF" ]; then
	cargo build --release -p skiff >/dev/null
	SKIFF=target/release/skiff
fi
VALUES=${VALUES:-60000}
BASE=${BASE_PORT:-41379}
DATA=$(mktemp -d /tmp/skiff-snapmem.XXXXXX)
PIDS=()

cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$DATA"
}
trap cleanup EXIT

cluster=""
for i in 1 2 3; do
	cluster+="${cluster:+,}m$i=http://127.0.0.1:$((BASE + 2 * i - 1))"
done
start() {
	local i=$1 state=$2
	"$SKIFF" serve --name "m$i" --data-dir "$DATA/m$i" \
		--listen-client-urls "http://127.0.0.1:$((BASE + 2 * i - 2))" \
		--advertise-client-urls "http://127.0.0.1:$((BASE + 2 * i - 2))" \
		--listen-peer-urls "http://127.0.0.1:$((BASE + 2 * i - 1))" \
		--initial-advertise-peer-urls "http://127.0.0.1:$((BASE + 2 * i - 1))" \
		--initial-cluster "$cluster" --initial-cluster-state "$state" \
		--snapshot-count 5000 >"$DATA/m$i.log" 2>&1 &
	PIDS[$i]=$!
}
peak_mib() { awk '/VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }

for i in 1 2 3; do start "$i" new; done
sleep 3
kill "${PIDS[3]}" 2>/dev/null || true
wait "${PIDS[3]}" 2>/dev/null || true
"$SKIFF" bench --endpoints "127.0.0.1:$BASE" --workload put --clients 64 --conns 8 \
	--total "$VALUES" --key-space "$VALUES" --val-size 4096 --warmup 0s >/dev/null
sleep 2
start 3 existing
# Wait until member 3 has installed a snapshot and caught up.
for _ in $(seq 1 120); do
	grep -q "installed a snapshot" "$DATA/m3.log" 2>/dev/null && break
	sleep 1
done
sleep 3
snap=$(ls -l "$DATA"/m1/raft/snap/*.snap 2>/dev/null | awk '{print $5}' | tail -1)
echo "skiff: $("$SKIFF" --version 2>/dev/null || echo "$SKIFF")"
echo "values: $VALUES x 4 KiB; newest snapshot file: $((snap / 1024 / 1024)) MiB"
echo "peak RSS (VmHWM): m1 $(peak_mib "${PIDS[1]}") MiB, m2 $(peak_mib "${PIDS[2]}") MiB, m3 (installed the snapshot) $(peak_mib "${PIDS[3]}") MiB"
grep -h "took a snapshot\|installed a snapshot" "$DATA"/m*.log | sed 's/^/  /' | tail -4
