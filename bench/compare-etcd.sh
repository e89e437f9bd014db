#!/usr/bin/env bash
# Benchmarks a 3-member etcd cluster and a 3-member Skiff cluster side by side on loopback,
# with the same `skiff bench` workloads, then runs `etcdctl check perf` against each, and
# prints a table of Skiff/etcd ratios.
#
#   bench/compare-etcd.sh                # everything (about 10 minutes)
#   DURATION=5s bench/compare-etcd.sh    # shorter measured phases
#   CHECK_PERF=0 bench/compare-etcd.sh   # skip etcdctl check perf (60 s per load and cluster)
#   PROFILE=1 bench/compare-etcd.sh      # also `perf record -g` the Skiff leader under put/256
#   CORE=0 bench/compare-etcd.sh         # skip the core microbenchmarks at the end
#   RAFTRS=0 bench/compare-etcd.sh       # skip the core-vs-raft-rs table (builds raft-rs)
#   TLS=1 bench/compare-etcd.sh          # both clusters with TLS on every client and peer
#                                        # connection (mutual, one throwaway CA from openssl)
#   AUTH=1 bench/compare-etcd.sh         # auth enabled on both; the load runs as a user whose
#                                        # role grants readwrite on the bench keys' prefix
#
# Results (JSON per run, check perf output, member logs) stay in $RESULTS (default: a new
# /tmp/skiff-compare.* directory); the members' data dirs are deleted at exit. Every process
# the script starts is killed on exit, however it exits.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DURATION=${DURATION:-8s}
WARMUP=${WARMUP:-2s}
KEY_SPACE=${KEY_SPACE:-10000}
CHECK_PERF=${CHECK_PERF:-1}
PROFILE=${PROFILE:-0}
CORE=${CORE:-1}
RAFTRS=${RAFTRS:-1}
TLS=${TLS:-0}
AUTH=${AUTH:-0}
RESULTS=${RESULTS:-$(mktemp -d /tmp/skiff-compare.XXXXXX)}
mkdir -p "$RESULTS"
DATA=$(mktemp -d /tmp/skiff-compare-data.XXXXXX)
export ETCDCTL_API=3
# Loopback only: both clusters and every client stay on 127.0.0.1.
ETCD_BASE=22379
SKIFF_BASE=23379

PIDS=()
cleanup() {
	local pid
	for pid in "${PIDS[@]}"; do
		kill "$pid" 2>/dev/null || true
	done
	for pid in "${PIDS[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
	PIDS=()
	rm -rf "$DATA"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '== %s\n' "$*" >&2; }

if ! command -v etcd >/dev/null; then
	log "installing etcd-server"
	apt-get update -qq && apt-get install -y -qq etcd-server >/dev/null
fi
command -v etcdctl >/dev/null || { echo "etcdctl not found (apt-get install etcd-client)" >&2; exit 1; }

log "building skiff (release)"
(cd "$ROOT" && cargo build --release -q -p skiff)
SKIFF=${CARGO_TARGET_DIR:-$ROOT/target}/release/skiff
[ -x "$SKIFF" ] || { echo "no skiff binary at $SKIFF" >&2; exit 1; }

# TLS=1: one CA, one certificate for every member (client and peer side, IP 127.0.0.1) and
# one client certificate (CN root), the same files and flags for both systems.
SCHEME=http
MEMBER_TLS=()
CLIENT_TLS=()
BENCH_TLS=()
if [ "$TLS" = 1 ]; then
	command -v openssl >/dev/null || { echo "TLS=1 needs openssl (apt-get install openssl)" >&2; exit 1; }
	SCHEME=https
	CERTS="$RESULTS/certs"
	mkdir -p "$CERTS"
	log "TLS: making a CA and certificates in $CERTS"
	(
		cd "$CERTS"
		openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=bench-ca \
			-keyout ca.key -out ca.crt 2>/dev/null
		for who in member client; do
			cn=$([ "$who" = client ] && echo root || echo bench-member)
			openssl req -newkey rsa:2048 -nodes -subj "/CN=$cn" \
				-keyout "$who.key" -out "$who.csr" 2>>openssl.log
			printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n' >"$who.ext"
			openssl x509 -req -in "$who.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
				-extfile "$who.ext" -out "$who.crt" 2>>openssl.log
		done
	)
	MEMBER_TLS=(--cert-file "$CERTS/member.crt" --key-file "$CERTS/member.key"
		--trusted-ca-file "$CERTS/ca.crt" --client-cert-auth
		--peer-cert-file "$CERTS/member.crt" --peer-key-file "$CERTS/member.key"
		--peer-trusted-ca-file "$CERTS/ca.crt" --peer-client-cert-auth)
	CLIENT_TLS=(--cacert "$CERTS/ca.crt" --cert "$CERTS/client.crt" --key "$CERTS/client.key")
	BENCH_TLS=("${CLIENT_TLS[@]}")
fi
# etcdctl with the cluster's TLS flags (none without TLS=1), and as root once auth is on.
CTL_AUTH=()
ectl() { etcdctl ${CLIENT_TLS[@]+"${CLIENT_TLS[@]}"} ${CTL_AUTH[@]+"${CTL_AUTH[@]}"} "$@"; }

# AUTH=1: root, a role `bench` with readwrite on the bench keys (zero-padded decimal numbers,
# all in the range ["0", ":")), a user `bencher` holding it, then auth enable. The load runs as bencher: every request pays a token lookup
# and a permission check, not root's shortcut.
BENCH_AUTH=()
enable_auth() {
	local eps=$1 cmd
	while read -r cmd; do
		# shellcheck disable=SC2086
		ectl --endpoints="$eps" $cmd </dev/null >/dev/null
	done <<-EOF
		user add root:rootpw
		role add root
		user grant-role root root
		role add bench
		role grant-permission bench readwrite 0 :
		user add bencher:benchpw
		user grant-role bencher bench
		auth enable
	EOF
	CTL_AUTH=(--user root:rootpw)
	BENCH_AUTH=(--user bencher:benchpw)
	# Every member must have applied `auth enable` before the load authenticates there (until
	# then it refuses a login: "authentication is not enabled").
	local ep i
	for ep in ${eps//,/ }; do
		for i in $(seq 1 50); do
			ectl --endpoints="$ep" get bench-ready >/dev/null 2>&1 && break
			sleep 0.2
		done
	done
}

# endpoints BASE -> 127.0.0.1:BASE,127.0.0.1:BASE+2,127.0.0.1:BASE+4 (no scheme: etcdctl 3.4)
endpoints() { echo "127.0.0.1:$1,127.0.0.1:$(($1 + 2)),127.0.0.1:$(($1 + 4))"; }
initial_cluster() {
	local prefix=$1 base=$2 i out=()
	for i in 0 1 2; do out+=("$prefix$((i + 1))=$SCHEME://127.0.0.1:$((base + 2 * i + 1))"); done
	(IFS=,; echo "${out[*]}")
}

# start_members SYSTEM BASE: starts 3 members of SYSTEM (etcd|skiff) in the background.
start_members() {
	local sys=$1 base=$2 i name client peer cluster
	cluster=$(initial_cluster "${sys:0:1}" "$base")
	for i in 0 1 2; do
		name="${sys:0:1}$((i + 1))"
		client="$SCHEME://127.0.0.1:$((base + 2 * i))"
		peer="$SCHEME://127.0.0.1:$((base + 2 * i + 1))"
		local flags=(--name "$name" --data-dir "$DATA/$name"
			--listen-client-urls "$client" --advertise-client-urls "$client"
			--listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer"
			--initial-cluster "$cluster" --initial-cluster-token "bench-$sys"
			--initial-cluster-state new ${MEMBER_TLS[@]+"${MEMBER_TLS[@]}"})
		if [ "$sys" = etcd ]; then
			etcd "${flags[@]}" >"$RESULTS/$name.log" 2>&1 &
		else
			"$SKIFF" serve "${flags[@]}" >"$RESULTS/$name.log" 2>&1 &
		fi
		PIDS+=($!)
	done
}

# wait_ready ENDPOINTS: until a write through the first endpoint succeeds (at most 60 s).
wait_ready() {
	local i
	for i in $(seq 1 120); do
		if ectl --endpoints="$1" --dial-timeout=1s --command-timeout=2s put bench-ready 1 >/dev/null 2>&1; then
			return 0
		fi
		sleep 0.5
	done
	echo "cluster at $1 never became ready" >&2
	return 1
}

# leader_index ENDPOINTS: 0-based index of the member that says it leads.
leader_index() {
	local i=0 ep
	for ep in ${1//,/ }; do
		if ectl --endpoints="$ep" endpoint status -w simple 2>/dev/null | awk -F', ' '{exit !($5 == "true")}'; then
			echo "$i"
			return 0
		fi
		i=$((i + 1))
	done
	echo 0
}

# run_bench SYSTEM NAME ENDPOINTS ARGS...: one `skiff bench` run, JSON to $RESULTS/SYSTEM-NAME.json.
run_bench() {
	local sys=$1 name=$2 eps=$3
	shift 3
	log "$sys: $name"
	"$SKIFF" bench --endpoints "$eps" --duration "$DURATION" --warmup "$WARMUP" \
		--key-space "$KEY_SPACE" --val-size 256 --json "$RESULTS/$sys-$name.json" \
		${BENCH_TLS[@]+"${BENCH_TLS[@]}"} ${BENCH_AUTH[@]+"${BENCH_AUTH[@]}"} "$@" \
		2>"$RESULTS/$sys-$name.progress" || log "$sys: $name failed (see $RESULTS/$sys-$name.progress)"
}

# bench_cluster SYSTEM BASE
bench_cluster() {
	local sys=$1 base=$2 eps leader leader_ep
	eps=$(endpoints "$base")
	log "$sys: starting 3 members on $eps"
	start_members "$sys" "$base"
	wait_ready "$eps"
	if [ "$AUTH" = 1 ]; then
		log "$sys: enabling auth (the load runs as user bencher)"
		enable_auth "$eps"
	fi
	leader=$(leader_index "$eps")
	leader_ep=$(echo "$eps" | cut -d, -f$((leader + 1)))
	log "$sys: leader is member $((leader + 1)) ($leader_ep)"

	run_bench "$sys" put-c1 "$leader_ep" --workload put --clients 1 --conns 1
	run_bench "$sys" put-c16 "$eps" --workload put --clients 16 --conns 6
	if [ "$sys" = skiff ] && [ "$PROFILE" = 1 ]; then
		local pid=${PIDS[$((${#PIDS[@]} - 3 + leader))]}
		log "skiff: perf record -g on the leader (pid $pid) during put-c256"
		# After the warmup, for most of the measured phase; DWARF unwinding because the
		# release build keeps debug info but no frame pointers.
		(sleep 2 && exec perf record -g --call-graph dwarf -F 199 -p "$pid" \
			-o "$RESULTS/skiff-leader.perf.data" -- sleep 6) >"$RESULTS/perf-record.log" 2>&1 &
		local perf_pid=$!
		run_bench "$sys" put-c256 "$eps" --workload put --clients 256 --conns 24
		wait "$perf_pid" || true
	else
		run_bench "$sys" put-c256 "$eps" --workload put --clients 256 --conns 24
	fi
	run_bench "$sys" get-l-c16 "$eps" --workload get --consistency l --clients 16 --conns 6
	run_bench "$sys" get-l-c256 "$eps" --workload get --consistency l --clients 256 --conns 24
	run_bench "$sys" mixed90-c256 "$eps" --workload mixed --read-ratio 0.9 --clients 256 --conns 24

	if [ "$CHECK_PERF" = 1 ]; then
		local load
		for load in m l; do
			log "$sys: etcdctl check perf --load=$load (60 s)"
			ectl --endpoints="$eps" del --prefix /etcdctl-check-perf/ >/dev/null 2>&1 || true
			{
				echo "\$ etcdctl --endpoints=$eps check perf --load=$load"
				timeout 150 etcdctl ${CLIENT_TLS[@]+"${CLIENT_TLS[@]}"} ${CTL_AUTH[@]+"${CTL_AUTH[@]}"} \
					--endpoints="$eps" check perf --load="$load" 2>&1 &&
					echo "(exit 0)" || echo "(exit $?)"
			} 2>&1 | tr '\r' '\n' | grep -Ev '^ *[0-9]+ / [0-9]+ |^[[:space:]]*$' \
				>"$RESULTS/$sys-checkperf-$load.txt" || true
			tail -n 8 "$RESULTS/$sys-checkperf-$load.txt" >&2
		done
	fi
	log "$sys: stopping"
	CTL_AUTH=()
	BENCH_AUTH=()
	cleanup
	DATA=$(mktemp -d /tmp/skiff-compare-data.XXXXXX)
}

bench_cluster etcd "$ETCD_BASE"
bench_cluster skiff "$SKIFF_BASE"

# The table: one row per workload, etcd and Skiff side by side, then Skiff/etcd ratios.
echo
echo "etcd $(etcd --version 2>/dev/null | head -n 1 | awk '{print $3}') vs skiff $(cd "$ROOT" && git describe --always --dirty); measured $DURATION after $WARMUP warmup; results in $RESULTS$([ "$TLS" = 1 ] && echo "; TLS (mutual) on every client and peer connection")$([ "$AUTH" = 1 ] && echo "; auth on, load as a non-root user")"
echo
printf '| %-13s | %11s | %11s | %8s | %9s | %8s | %9s | %8s | %9s | %7s | %7s | %6s |\n' \
	workload "etcd ops/s" "skiff ops/s" "etcd p50" "skiff p50" "etcd p99" "skiff p99" "etcd max" "skiff max" "thr x" "p99 x" errors
printf '|%s|\n' "---------------|-------------|-------------|----------|-----------|----------|-----------|----------|-----------|---------|---------|--------"
for name in put-c1 put-c16 put-c256 get-l-c16 get-l-c256 mixed90-c256; do
	e="$RESULTS/etcd-$name.json"
	s="$RESULTS/skiff-$name.json"
	if [ -f "$e" ] && [ -f "$s" ]; then
		jq -rn --arg name "$name" --slurpfile e "$e" --slurpfile s "$s" '
			$e[0] as $e | $s[0] as $s |
			def r(a; b): if b > 0 then (a / b * 100 | round / 100) else "-" end;
			[$name, ($e.throughput_ops_s | round), ($s.throughput_ops_s | round),
			 $e.latency_ms.p50, $s.latency_ms.p50, $e.latency_ms.p99, $s.latency_ms.p99,
			 $e.latency_ms.max, $s.latency_ms.max,
			 r($s.throughput_ops_s; $e.throughput_ops_s), r($s.latency_ms.p99; $e.latency_ms.p99),
			 "\($e.errors_total)/\($s.errors_total)"] | @tsv' |
			awk -F'\t' '{printf "| %-13s | %11s | %11s | %8s | %9s | %8s | %9s | %8s | %9s | %7s | %7s | %6s |\n", $1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12}'
	else
		printf '| %-13s | missing result: %s %s\n' "$name" "$([ -f "$e" ] || echo etcd)" "$([ -f "$s" ] || echo skiff)"
	fi
done
echo
echo "latencies in ms; thr x = Skiff/etcd throughput; p99 x = Skiff/etcd p99 (lower is better); errors = etcd/skiff"
if [ "$CHECK_PERF" = 1 ]; then
	for sys in etcd skiff; do
		for load in m l; do
			f="$RESULTS/$sys-checkperf-$load.txt"
			[ -f "$f" ] || continue
			echo
			echo "$sys check perf --load=$load:"
			grep -E 'PASS|FAIL|Slowest|Stddev|Throughput|rror|exit' "$f" | sed 's/^/  /' || true
		done
	done
fi

# The consensus core alone, after the clusters are gone (no IO, 3 nodes in memory).
if [ "$CORE" = 1 ]; then
	echo
	echo "core microbenchmarks (cargo bench -p skiff-raft):"
	(cd "$ROOT" && cargo bench -q -p skiff-raft 2>/dev/null) | sed 's/^/  /' || echo "  (failed)"
fi
if [ "$RAFTRS" = 1 ]; then
	echo
	echo "Skiff core vs raft-rs 0.7, same harness (bench/raft-rs):"
	(cd "$ROOT" && cargo run -q --release --manifest-path bench/raft-rs/Cargo.toml 2>/dev/null) |
		sed 's/^/  /' || echo "  (raft-rs did not build)"
fi
