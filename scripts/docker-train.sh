#!/bin/sh
# Entry point of the training image (Dockerfile.train): train one model and export it as a
# model folder into /models, where the service reads it (after a restart).
#
#   latentserve-train-model NAME [latent-train fit flags...]
#   e.g. latentserve-train-model mnist-vae-16 --kind vae --latent-dim 16 --epochs 30
#
# The run folder (checkpoint) goes to /runs/NAME; a second call with --resume continues it.
# MNIST: the official download (cached in ~/.cache) where reachable, else the IDX files in
# $LATENTSERVE_DATA_DIR (default /data/mnist: mount a folder there). Any other first argument
# runs latent-train itself (e.g. `data`, `analyze /models/mnist-vae`).
set -eu
case "${1:-}" in
  "" | -h | --help) sed -n '2,12p' "$0"; exit 0 ;;
  data | fit | export | analyze | classifier) exec latent-train "$@" ;;
esac
name=$1
shift
latent-train fit --out "/runs/$name" --no-progress "$@"
latent-train export "/runs/$name" --out "/models/$name" --name "$name"
echo "model folder /models/$name is ready; restart the server to load it"
