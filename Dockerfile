# syntax=docker/dockerfile:1
# proxycached: multi-stage build on Debian bookworm-slim.
# The build stage runs the same scripts as the README and CI
# (scripts/install-deps.sh, scripts/build.sh); scripts/docker-recipe.sh runs
# these steps on the host in CI, since no Docker engine is available there.

FROM debian:bookworm-slim AS build
WORKDIR /src
COPY . .
RUN scripts/install-deps.sh build \
 && CFLAGS="-O2 -D_FORTIFY_SOURCE=2 -fstack-protector-strong" \
    scripts/build.sh /build --prefix=/usr/local \
 && make -C /build install DESTDIR=/stage

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libmicrohttpd12 libsqlite3-0 libssl3 libjansson4 curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/proxycache --shell /usr/sbin/nologin proxycache \
 && mkdir -p /var/lib/proxycache \
 && chown proxycache:proxycache /var/lib/proxycache
COPY --from=build /stage/usr/local /usr/local
# Configuration by environment only (see README); an API token is required
# to listen on all interfaces: set PROXYCACHE_API_TOKEN at run time.
ENV PROXYCACHE_LISTEN=0.0.0.0:8080 \
    PROXYCACHE_DATA_DIR=/var/lib/proxycache \
    PROXYCACHE_OPENAPI=/usr/local/share/doc/proxycache/openapi.yaml
USER proxycache
VOLUME ["/var/lib/proxycache"]
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8080/healthz"]
# Exec form: proxycached is PID 1 and receives SIGTERM directly.
ENTRYPOINT ["/usr/local/bin/proxycached"]
