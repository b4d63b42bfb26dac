# syntax=docker/dockerfile:1
#
# pgcrypt-proxy: a static binary (cgo, for the PostgreSQL parser libpg_query,
# linked statically against glibc) in a distroless image: no shell, no
# package manager, CA certificates and tzdata included, running as uid 65532.
#
#   docker build -t pgcrypt-proxy --build-arg VERSION=$(git describe --tags --always) .
#   docker run --rm pgcrypt-proxy version
#
# Health: the image has no curl and no shell, so a Dockerfile HEALTHCHECK
# cannot probe it. Use the orchestrator's HTTP probes on the admin listener
# (admin.listen, port 9187): liveness GET /healthz, readiness GET /readyz.

ARG GO_IMAGE=golang:1.26-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/static-debian12:nonroot

FROM ${GO_IMAGE} AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
# netgo and osusergo keep glibc's NSS (getaddrinfo, getpwnam) out of the
# static binary: linked statically, those would need the build's shared
# glibc at run time. The binary must come out static: the final image has
# no libc to load.
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=1 go build -trimpath -tags netgo,osusergo \
      -ldflags "-s -w -X main.version=${VERSION} -linkmode external -extldflags -static" \
      -o /out/pgcrypt-proxy ./cmd/pgcrypt-proxy \
 && if readelf -l /out/pgcrypt-proxy | grep -q INTERP; then echo "pgcrypt-proxy is not static" >&2; exit 1; fi \
 && /out/pgcrypt-proxy version \
 && install -d -o 65532 -g 65532 -m 0700 /out/state

# Demo profile only (docker-compose.yml, service demo-init): certificates and
# a local keyring for the demo, made with this stage's openssl and binary.
FROM build AS demo-init
RUN install -m 0755 /out/pgcrypt-proxy /usr/local/bin/pgcrypt-proxy \
 && install -m 0755 /src/deploy/demo/init.sh /usr/local/bin/demo-init
ENTRYPOINT ["/usr/local/bin/demo-init"]

FROM ${RUNTIME_IMAGE}
COPY --from=build /out/pgcrypt-proxy /usr/local/bin/pgcrypt-proxy
# The local keyring's home (a volume in docker-compose.yml): a new named
# volume takes this directory's owner, so the proxy can write the keyring
# and its lock file.
COPY --from=build --chown=65532:65532 /out/state /var/lib/pgcrypt-proxy
# Config, policy and certificates are mounted here; relative paths in the
# config resolve against it, and "serve" reads ./pgcrypt-proxy.yaml.
WORKDIR /etc/pgcrypt-proxy
USER 65532:65532
# 6432: PostgreSQL clients. 9187: admin (/metrics /healthz /readyz).
EXPOSE 6432 9187
# SIGTERM drains: no new connections, sessions close when idle, the rest
# after shutdown_grace (keep the orchestrator's grace period longer).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/pgcrypt-proxy"]
CMD ["serve"]
