# bench-lib.sh — what scripts/*-bench.sh share; source it after setting
# name (the script's, for messages and its temporary directory):
#
#   name=handover-bench
#   . "$(dirname "$0")/bench-lib.sh" "$@"
#
# It takes the script's arguments [BINARY] [RUNS] into bin (default
# bin/ftckpt, made absolute) and runs (default 2), makes a temporary
# directory, cds into it and removes it at exit with every process the
# script started, and makes a TLS CA and certificate there for localhost:
# tls holds the flags that use them.
set -euo pipefail
bin=$(realpath "${1:-bin/ftckpt}")
runs=${2:-2}
dir=$(mktemp -d "/tmp/ftckpt-$name.XXXXXX")
cleanup() {
	kill -9 $(jobs -p) 2>/dev/null || true
	wait 2>/dev/null || true
	rm -rf "$dir"
}
trap cleanup EXIT
cd "$dir"
"$bin" certs init ./certs --hosts localhost >/dev/null
tls=(--tls-cert certs/localhost.crt --tls-key certs/localhost.key --tls-ca certs/ca.crt)

# waitfor PATTERN FILE [N]: until FILE has N (default 1) lines matching
# PATTERN (120 s).
waitfor() {
	for _ in $(seq 1200); do
		[ "$(grep -c -- "$1" "$2" 2>/dev/null || true)" -ge "${3:-1}" ] && return 0
		sleep 0.1
	done
	echo "$name: no \"$1\" in $2 after 120 s:" >&2
	tail -5 "$2" >&2
	return 1
}

# syncdone MODE: the line a primary logs when a backup's full sync is done:
# checkpoint mode's "full sync: done … shipped as", replay mode's "full
# checkpoint sent by pre-copy … bytes=".
syncdone() {
	if [ "$1" = replay ]; then
		echo "full checkpoint sent by pre-copy"
	else
		echo "full sync: done"
	fi
}
