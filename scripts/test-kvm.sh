#!/usr/bin/env bash
# test-kvm.sh — run every test that needs KVM (its name contains KVM; see
# vmm/vmmtest.RequireKVM), with FTCKPT_REQUIRE_KVM=1 so that none can skip.
#
#   scripts/test-kvm.sh native     on this host's /dev/kvm
#   scripts/test-kvm.sh emulated   inside the emulated machine of $KVMTCG
#                                  (default ../shared/kvm-tcg/run.sh): one
#                                  boot for all packages
#
# The test binaries are built here, on the host, and run from their package
# directories. Extra arguments go to every test binary (e.g. -test.v).
set -euo pipefail
cd "$(dirname "$0")/.."
where=${1:?usage: scripts/test-kvm.sh native|emulated [test flags...]}
shift
KVMTCG=${KVMTCG:-../shared/kvm-tcg/run.sh}
GO=${GO:-go}

# Packages with KVM tests: those whose tests call vmmtest.RequireKVM.
mapfile -t pkgs < <(grep -rl --include='*_test.go' 'vmmtest\.RequireKVM' . | xargs -n1 dirname | sort -u)
out=$(mktemp -d /tmp/ftckpt-kvm.XXXXXX)
trap 'rm -rf "$out"' EXIT
runner=$out/run-all.sh
{
	echo 'set -u; failed=0; cd "$1"'
	echo 'export FTCKPT_REQUIRE_KVM=1'
} >"$runner"
args= # quoted for the runner: a -test.run of 'A|B' stays one argument
[ $# -eq 0 ] || args=$(printf '%q ' "$@")
for p in "${pkgs[@]}"; do
	bin=$out/$(echo "${p#./}" | tr / _).test
	$GO test -c -o "$bin" "$p"
	echo "echo \"=== $p\"; (cd $p && $bin -test.run KVM -test.count=1 -test.timeout 30m $args) || failed=1" >>"$runner"
done
echo 'exit $failed' >>"$runner"

case $where in
native)
	bash "$runner" "$PWD"
	;;
emulated)
	# Every guest exit costs ~0.3 ms there: the kill tests kill fewer times.
	# Its /tmp is the host's over 9p, where Unix sockets cannot be bound
	# (the nodes' control sockets): temporary files go to /dev/shm.
	sed -i '2i export FTCKPT_KILLS=${FTCKPT_KILLS:-3} TMPDIR=/dev/shm' "$runner"
	if [ ! -x "$KVMTCG" ]; then
		echo "test-kvm: no emulated machine at $KVMTCG (set KVMTCG to its run.sh)" >&2
		exit 1
	fi
	"$KVMTCG" --share "$out" -- bash "$runner" "$PWD"
	;;
*)
	echo "test-kvm: want native or emulated, not $where" >&2
	exit 2
	;;
esac
