#!/usr/bin/env bash
# Tracing cost (benchmarks/RESULTS.md, "Tracing cost"): `latent-bench --overhead` (server CPU
# per single-image Encode call at 64 h2load streams) on a base commit, then this tree with
# tracing off, on (OTLP to a local receiver, every call sampled) and on at 1% sampling,
# alternating for CYCLES cycles so each configuration sees the same machine load.
# Usage: scripts/bench_tracing_cost.sh [BASE_COMMIT] [OUT_DIR] [CYCLES]   (from the repo root,
# with .venv holding the serve, dev and bench extras).
set -euo pipefail
BASE=${1:-main}
OUT=${2:-/tmp/latentserve-tracing-cost}
CYCLES=${3:-3}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
base_src=$(mktemp -d)
git archive "$BASE" | tar -x -C "$base_src"
PY=.venv/bin/python
port=$($PY -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
PYTHONPATH=tests $PY tests/fixtures/otlp_receiver.py "$port" > "$OUT/receiver.log" 2>&1 &
receiver=$!
trap 'kill $receiver 2>/dev/null || true; rm -rf "$base_src"' EXIT
otlp=(OTEL_TRACES_EXPORTER=otlp OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$port" OTEL_EXPORTER_OTLP_INSECURE=true)
bench=(.venv/bin/latent-bench --overhead --models-dir "$PWD/models")
uptime > "$OUT/uptime-start"
for cycle in $(seq "$CYCLES"); do
  env PYTHONPATH="$base_src" "${bench[@]}" --json "$OUT/base-$cycle.json" > "$OUT/base-$cycle.log" 2>&1
  "${bench[@]}" --json "$OUT/off-$cycle.json" > "$OUT/off-$cycle.log" 2>&1
  env "${otlp[@]}" "${bench[@]}" --json "$OUT/on-$cycle.json" > "$OUT/on-$cycle.log" 2>&1
  env "${otlp[@]}" OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG=0.01 \
    "${bench[@]}" --json "$OUT/on1pct-$cycle.json" > "$OUT/on1pct-$cycle.log" 2>&1
done
uptime > "$OUT/uptime-end"
$PY - "$OUT" "$CYCLES" <<'PY'
import json, statistics, sys
out, cycles = sys.argv[1], int(sys.argv[2])
encode = {c: [json.load(open(f"{out}/{c}-{i}.json"))["encode"]["cpu_ms_per_call"] for i in range(1, cycles + 1)] for c in ("base", "off", "on", "on1pct")}
for c, values in encode.items():
    print(f"{c:7s} Encode CPU ms/call {[round(v, 3) for v in values]} median {statistics.median(values):.3f}")
for c in ("off", "on", "on1pct"):
    ratios = [a / b for a, b in zip(encode[c], encode["base"])]
    print(f"{c} / base per cycle {[round(r, 3) for r in ratios]}")
PY
