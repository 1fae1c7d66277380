# Coattail — see README.md. `make help` lists the targets.
GO        ?= go
BIN       ?= bin/coattail
# Executions per fuzz target. A count rather than a duration: on Go 1.26 a
# duration-based -fuzztime can end in a spurious "context deadline
# exceeded" failure at the deadline (golang/go#75804, fixed in Go 1.27).
FUZZTIME  ?= 100000x
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X github.com/coattail/coattail/node.Version=$(VERSION)

.PHONY: help build demo lab test test-short bench bench-nats fuzz lint clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

build: ## build bin/coattail
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/coattail

demo: build ## run the multi-instance demo on loopback (temp dir, cleaned up)
	COATTAIL_BIN=$(abspath $(BIN)) bash scripts/demo.sh

lab: build ## a 10-node loopback mesh with a publication storm (NODES=100 for the big one)
	$(BIN) lab --nodes $(or $(NODES),10) --topology $(or $(TOPOLOGY),mesh)

test: ## run every test with the race detector (scripts/test.sh)
	GO=$(GO) bash scripts/test.sh

test-short: ## unit tests only, no race detector
	$(GO) test -short -count=1 ./...

bench: ## benchmarks; each prints a ratio against a baseline measured in the same run (~5 min)
	$(GO) test -run '^$$' -bench . -benchtime 1s ./topics/ ./auth/ ./node/wire/ ./node/runner/ ./node/internal/jsonx/
	$(GO) test -run '^$$' -bench 'RemotePerform|PerformUnderFlood' -benchtime 3000x ./node/
	$(GO) test -run '^$$' -bench 'Delivery$$/.*/size=128/' -benchtime 2000x ./node/
	$(GO) test -run '^$$' -bench 'Delivery$$/.*/size=65536/' -benchtime 60x ./node/
	$(GO) test -run '^$$' -bench 'DeliveryExecReceiver' -benchtime 300x ./node/
	$(GO) test -run '^$$' -bench 'NotifyLatency' -benchtime 50x ./cmd/coattail/

bench-nats: ## Coattail against NATS core and JetStream in the same run, 128 B and 64 KiB (scripts/natsbench, its own module; NATSBENCH_FLAGS adds flags)
	cd scripts/natsbench && $(GO) run . --size 128B $(NATSBENCH_FLAGS)
	cd scripts/natsbench && $(GO) run . --size 64KiB $(NATSBENCH_FLAGS)

fuzz: ## run every fuzz target for FUZZTIME (executions, or a duration) each
	@set -e; for pkg in $$(grep -rl --include='*_test.go' '^func Fuzz' . | xargs -n1 dirname | sort -u); do \
	  for f in $$(grep -h '^func Fuzz' $$pkg/*_test.go | sed 's/func \(Fuzz[A-Za-z0-9_]*\).*/\1/'); do \
	    echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	  done; done

lint: ## gofmt, go vet, staticcheck when installed, and a build for macOS and FreeBSD
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	GOOS=darwin $(GO) build ./...
	GOOS=freebsd $(GO) build ./...
	@if command -v staticcheck >/dev/null; then staticcheck ./...; else echo "staticcheck not installed; skipped"; fi

clean: ## remove build output
	rm -rf bin
