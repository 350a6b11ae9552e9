# ftckpt — build, test, run and benchmark.
#
#   make run    build, then run the kv guest replicated in replay mode (primary here, a backup
#               child process that joins it, a new one after every failover; KVM where /dev/kvm
#               opens, else the software machine)
#   make run-checkpoint  the same in checkpoint mode (25 ms epochs)
#   make test   vet, then every test: on this host's KVM where /dev/kvm opens, else the KVM tests
#               run inside an emulated machine (KVMTCG); a KVM test never skips
#   make test-kvm  only the KVM tests, inside the emulated machine (a second, different KVM)
#   make race   the engines', formats' and machines' tests under the race detector (CI runs it)
#   make bench  Go benchmarks (numbers, never pass/fail)
#   make fuzz   every decoder's fuzzer, FUZZTIME (default 20s) each
#   make chaos  kill -9 the current primary of a local pair KILLS times (default 200) in a row,
#               re-protected by --respawn each time, on the software machine and on KVM (not in CI)

GO ?= go
BIN := bin/ftckpt
STATICCHECK_VERSION := v0.8.2
FUZZTIME ?= 20s
KILLS ?= 200
# How long each new input is minimized. Short: FuzzHandshake's coverage varies
# from run to run (goroutines, fresh TLS keys), and minimizing such an input
# for the default minute would take the whole FUZZTIME.
FUZZMINIMIZETIME ?= 1s
# KVMTCG runs a command where /dev/kvm works, on a host without one.
export KVMTCG ?= $(abspath ../shared/kvm-tcg/run.sh)
KVM_NATIVE := $(shell (exec 3<>/dev/kvm) 2>/dev/null && echo yes)
# package:fuzzer, for make fuzz
FUZZERS := ./checkpoint:FuzzDecodeCheckpoint ./checkpoint:FuzzDecodeMessage \
	./modes/replay:FuzzDecodeBatch ./vmm/sim:FuzzRestoreState \
	./vmm/sim:FuzzDisassemble ./witness:FuzzDecodeLease ./vmm:FuzzDecodeState \
	./checkpoint/mtls:FuzzHandshake

.PHONY: all build guests test test-kvm test-short race run run-checkpoint bench fuzz chaos lint clean

all: build

guests:
	$(MAKE) -C guests

build: guests
	$(GO) build -o $(BIN) ./cmd/ftckpt

test: guests
	$(GO) vet ./...
ifeq ($(KVM_NATIVE),yes)
	FTCKPT_REQUIRE_KVM=1 $(GO) test -count=1 -timeout 40m ./...
else
	@echo "make test: /dev/kvm cannot be opened here; the KVM tests run in the emulated machine ($(KVMTCG))"
	$(GO) test -count=1 -timeout 40m ./...
	scripts/test-kvm.sh emulated
endif

test-kvm: guests
	scripts/test-kvm.sh emulated

test-short: guests
	$(GO) test -count=1 -short ./...

# The packages whose goroutines share memory most (engines, formats, machines,
# witness, the nodes that put them together: modes/node's pairs run in the
# test's process, 25 s under -race); cmd/ftckpt's tests, which run ftckpt
# processes over the same code, took 4 min under -race here and are left to
# make test.
RACE_PKGS = ./checkpoint/... ./outbuf/... ./dirtylog/... ./modes/checkpoint/... ./modes/replay/... \
	./modes/session/... ./modes/node/... ./vmm/... ./witness/...

race: guests
	$(GO) test -race -count=1 -timeout 30m $(RACE_PKGS)

run: build
	./$(BIN) --mode replay --guest kv

run-checkpoint: build
	./$(BIN) --mode checkpoint --guest kv

bench: guests
	$(GO) test -run '^$$' -bench . -benchtime 1x ./...

fuzz: guests
	@for f in $(FUZZERS); do \
		echo "fuzz $${f#*:} in $${f%%:*} for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$${f#*:}$$" -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZETIME) "$${f%%:*}" || exit 1; \
	done

chaos: guests
	FTCKPT_KILLS=$(KILLS) $(GO) test -count=1 -timeout 0 -v -run 'RespawnSurvivesKills|RespawnMirroredDisks' ./cmd/ftckpt

lint:
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...
	$(GO) mod tidy -diff
	@bad=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$bad" ]; then echo "gofmt would change: $$bad"; exit 1; fi

clean:
	$(MAKE) -C guests clean
	rm -rf bin
