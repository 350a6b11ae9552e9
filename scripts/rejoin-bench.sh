#!/usr/bin/env bash
# rejoin-bench.sh — what a full sync costs when the joining backup's
# mirrored image is already the primary's disk, as after a failover: a
# --role primary and a --role backup --join process on loopback (kv guest,
# TLS, KVM where /dev/kvm opens), both images a copy of the same SIZE_MB
# (default 64) of random data. For each mode and run it prints the
# primary's line for the sync: checkpoint mode's "full sync: done …
# shipped as", replay mode's "full checkpoint sent by pre-copy … bytes=".
#
#   scripts/rejoin-bench.sh [BINARY] [RUNS]      (default bin/ftckpt, 2)
#
# Give an older build as BINARY to compare: the README's figures are this
# script's, for a4db58d (before image hashes) and for the build after it.
name=rejoin-bench
. "$(dirname "$0")/bench-lib.sh" "$@"
head -c $((${SIZE_MB:-64} << 20)) /dev/urandom >data.img

for mode in checkpoint replay; do
	common=(--mode "$mode" --guest kv --param journal=1000 --param flush=1 --net udp:127.0.0.1:0
		--arbiter disk:lease "${tls[@]}")
	[ "$mode" = checkpoint ] && common+=(--vcpus 2)
	done_line=$(syncdone "$mode")
	for run in $(seq "$runs"); do
		rm -f lease* ./*.sock a.log b.log
		cp data.img a.img
		cp data.img b.img
		"$bin" "${common[@]}" --role primary --accept-backups 127.0.0.1:0 --disk a.img --control a.sock >a.log 2>&1 &
		primary=$!
		waitfor "accepting backups" a.log
		addr=$(grep -o 'accepting backups addr=[^ ]*' a.log | head -1 | cut -d= -f2)
		"$bin" "${common[@]}" --role backup --join "$addr" --disk b.img --control b.sock >b.log 2>&1 &
		backup=$!
		waitfor "$done_line" a.log
		echo "$mode, run $run: $(grep -h -- "$done_line" a.log | head -1 | sed 's/^.*INFO //')"
		kill -9 "$backup" "$primary"
		wait "$backup" "$primary" 2>/dev/null || true
	done
done
