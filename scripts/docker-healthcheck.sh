#!/bin/sh
# The image's HEALTHCHECK: ask the server's grpc.health.v1 service on the port it listens on.
# latent-client exits 0 only when the server reports SERVING (warm-up done, not draining).
# A wildcard bind address is reached through loopback.
host=${LATENTSERVE_HOST:-127.0.0.1}
case "$host" in 0.0.0.0 | "::" | "[::]" | "") host=127.0.0.1 ;; esac
case "$host" in *:*) case "$host" in \[*) ;; *) host="[$host]" ;; esac ;; esac
exec latent-client --target "$host:${LATENTSERVE_PORT:-50051}" --timeout "${LATENTSERVE_HEALTH_TIMEOUT:-3}" health
