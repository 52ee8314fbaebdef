# Ferry: `make demo` runs the pipeline end to end; `make test` runs every
# test. Both install what they need first (make deps).
SHELL := /bin/bash
GO ?= go
BIN := bin
export GOTOOLCHAIN := local

.PHONY: all build deps test test-containers compose-check bench chaos demo clean

all: build

# Installs kcat, the PostgreSQL 15 server, Debian's docker-compose (to
# validate docker-compose.yml without an engine) and chromium (the web
# page's test) when missing, and the Go modules. apt-get needs root; without root, install them yourself.
deps:
	@missing=(); \
	command -v kcat >/dev/null || missing+=(kcat); \
	command -v docker-compose >/dev/null || missing+=(docker-compose); \
	command -v curl >/dev/null || missing+=(curl); \
	command -v psql >/dev/null || missing+=(postgresql-client-15); \
	command -v chromium >/dev/null || missing+=(chromium fonts-dejavu-core); \
	{ command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; } || missing+=(postgresql-15); \
	if [ $${#missing[@]} -gt 0 ]; then \
		echo "installing: $${missing[*]}"; \
		if [ "$$(id -u)" != 0 ]; then echo "need root to apt-get install $${missing[*]}" >&2; exit 1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$${missing[@]}" >/dev/null; \
	fi
	$(GO) mod download

build:
	$(GO) build -o $(BIN)/ ./cmd/...
	$(GO) build -o $(BIN)/orderservice ./examples/orderservice

compose-check: deps
	docker-compose -f docker-compose.yml config -q

# vet + race tests against a throwaway PostgreSQL cluster and kfake over
# TCP, nothing skipped; then checks docker-compose.yml.
test: deps compose-check
	$(GO) vet ./...
	$(GO) vet -tags containers ./...   # the testcontainers path must compile
	$(GO) test -race -count=1 -timeout 15m ./...
	cd examples/custom-connector && $(GO) vet ./... && $(GO) test -race -count=1 -timeout 5m ./...   # its own module, ferry replaced by this checkout

# The same tests against real Kafka and PostgreSQL containers (needs a
# Docker engine).
test-containers: deps
	FERRY_TEST_BACKEND=containers $(GO) test -tags containers -race -count=1 -timeout 30m ./...

# Benchmarks (not tests): writes docs/benchmarks.md.
bench: deps build
	$(GO) run ./bench/cdcbench -out docs/benchmarks.md $(BENCH_ARGS)
	$(GO) run ./bench/sinkbench -out docs/benchmarks.md $(SINK_BENCH_ARGS)

# The fault suite (not part of make test's budget; its short variant,
# internal/chaos's test, is): 20 runs of broker kill -9, produce errors,
# PostgreSQL restarts, cdc and sink SIGKILL under load, with figures; exits
# 1 if an event was lost, reordered or applied twice. CHAOS_ARGS e.g.
# "-runs 5 -seed 7", "-sync-writes", "-out results.jsonl" (docs/reliability.md).
chaos: deps build
	$(GO) run ./bench/chaos -bin $(BIN) $(CHAOS_ARGS)

demo: deps build
	./scripts/demo.sh

clean:
	rm -rf $(BIN) .demo
