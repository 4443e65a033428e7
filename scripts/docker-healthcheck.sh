#!/bin/sh
# The image's HEALTHCHECK: ask the server's grpc.health.v1 service on the port it listens on.
# latent-client exits 0 only when the server reports SERVING (warm-up done, not draining).
# Health needs no auth token. A wildcard bind address is reached through loopback.
#
# TLS (server started with LATENTSERVE_TLS_CERT_FILE): the probe trusts
# LATENTSERVE_HEALTH_TLS_CA (default: the server's own certificate, right for a self-signed
# one) and checks the certificate for LATENTSERVE_HEALTH_TLS_SERVER_NAME (default: the
# address probed, 127.0.0.1 unless LATENTSERVE_HOST names one). With mutual TLS
# (LATENTSERVE_TLS_CLIENT_CA_FILE) it presents LATENTSERVE_HEALTH_TLS_CERT / _KEY.
set -eu
host=${LATENTSERVE_HOST:-127.0.0.1}
case "$host" in 0.0.0.0 | "::" | "[::]" | "") host=127.0.0.1 ;; esac
case "$host" in *:*) case "$host" in \[*) ;; *) host="[$host]" ;; esac ;; esac
set -- --target "$host:${LATENTSERVE_PORT:-50051}" --timeout "${LATENTSERVE_HEALTH_TIMEOUT:-3}"
if [ -n "${LATENTSERVE_TLS_CERT_FILE:-}" ]; then
  set -- "$@" --tls-ca "${LATENTSERVE_HEALTH_TLS_CA:-$LATENTSERVE_TLS_CERT_FILE}"
  if [ -n "${LATENTSERVE_HEALTH_TLS_SERVER_NAME:-}" ]; then
    set -- "$@" --tls-server-name "$LATENTSERVE_HEALTH_TLS_SERVER_NAME"
  fi
  if [ -n "${LATENTSERVE_HEALTH_TLS_CERT:-}" ]; then
    set -- "$@" --tls-cert "$LATENTSERVE_HEALTH_TLS_CERT" --tls-key "${LATENTSERVE_HEALTH_TLS_KEY:?LATENTSERVE_HEALTH_TLS_KEY is needed with LATENTSERVE_HEALTH_TLS_CERT}"
  fi
fi
exec latent-client "$@" health
