#!/usr/bin/env bash
# handover-bench.sh — what it costs to protect the guest again after a
# planned failover: two --role processes on loopback (TLS, KVM where
# /dev/kvm opens), each given the other's --accept-backups as --rejoin;
# ftckpt ctl failover hands the guest over and the old primary joins the
# new one as its backup. The guest is memtouch holding FILL_PAGES (default
# 2048) pages of random data, of which it rewrites 16 bytes of 64 pages a
# second. For each mode and run it prints the new primary's line for the
# rejoin's sync: checkpoint mode's "full sync: done … shipped as", replay
# mode's "full checkpoint sent by pre-copy … bytes=".
#
#   scripts/handover-bench.sh [BINARY] [RUNS]      (default bin/ftckpt, 2)
#
# Give an older build as BINARY to compare (the README's figures: 93224e1,
# before a rejoining node kept its memory, against the build after).
# Guests run slowly on nested KVM (~1 M instructions/s): filling 2048 pages
# takes the guest ~10 s there, and the script waits for it.
name=handover-bench
. "$(dirname "$0")/bench-lib.sh" "$@"
fill=${FILL_PAGES:-2048}

# freeport: a TCP port nothing listens on now.
freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

for mode in checkpoint replay; do
	common=(--mode "$mode" --guest memtouch --memory 64M --param ws="$fill" --param fill=1
		--param dirty=64 --param rate=1 --param every=1 --disk none --net none --arbiter disk:lease "${tls[@]}")
	done_line=$(syncdone "$mode")
	for run in $(seq "$runs"); do
		rm -f lease* ./*.sock a.log b.log
		pa=$(freeport)
		pb=$(freeport)
		"$bin" "${common[@]}" --role primary --accept-backups "127.0.0.1:$pa" --rejoin "127.0.0.1:$pb" --control a.sock >a.log 2>&1 &
		waitfor "memtouch: pass 1 " a.log # filled
		"$bin" "${common[@]}" --role backup --join "127.0.0.1:$pa" --accept-backups "127.0.0.1:$pb" --rejoin "127.0.0.1:$pa" --control b.sock >b.log 2>&1 &
		waitfor "$done_line" a.log
		sleep 2
		"$bin" ctl --control a.sock failover >/dev/null
		waitfor "$done_line" b.log
		echo "$mode, run $run: $(grep -h -- "$done_line" b.log | head -1 | sed 's/^.*INFO //')"
		kill -9 $(jobs -p) 2>/dev/null || true
		wait 2>/dev/null || true
	done
done
