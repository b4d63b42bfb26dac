# pgcrypt-proxy — see README.md.
GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X main.version=$(VERSION)
BIN      := bin/pgcrypt-proxy
# make test runs every package, end-to-end tests included; TESTFLAGS adds flags.
TESTFLAGS ?=
FUZZTIME ?= 30s

.PHONY: all build test demo bench lint fuzz clean

all: build

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/pgcrypt-proxy

test: build
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 45m $(TESTFLAGS) ./...

demo: build
	$(GO) run ./internal/cmd/demo -proxy-bin $(BIN)

bench: build
	$(GO) run ./internal/cmd/bench -proxy-bin $(BIN) $(BENCHFLAGS)

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# fuzz runs every fuzz target for FUZZTIME each; the corpus lives in testdata/fuzz.
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg; \
	  done; done

clean:
	rm -rf bin .bench
