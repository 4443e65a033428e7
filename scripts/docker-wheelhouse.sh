#!/usr/bin/env bash
# Download, on the host, every wheel a Docker build target needs, into wheelhouse/<target>/,
# so the image can be built with `--build-arg USE_WHEELHOUSE=1` (pip --no-index inside the
# build). For machines where pip inside `docker build` cannot reach or verify PyPI; everyone
# else builds online and never needs this.
#
#   scripts/docker-wheelhouse.sh serve        # serving image (no torch), ~60 MB of wheels
#   scripts/docker-wheelhouse.sh train        # training image (torch CPU), ~300 MB
#
# The wheels are for the images' platform (Linux x86_64, CPython 3.11, glibc >= 2.28), not
# necessarily the host's. The requirement list is read from pyproject.toml and written beside
# the wheels; a second run with the same list does nothing (delete the folder to refresh).
# torch: pip resolves `torch==2.13.0` through the host's pip configuration (where a local
# CPU wheel may be configured); set TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu to
# fetch the CPU wheel instead of PyPI's CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
target=${1:?usage: $0 serve|train}
case "$target" in
  serve) extras="serve" ;;
  train) extras="train" ;;
  *) echo "unknown target '$target' (serve|train; the gpu image builds online only)" >&2; exit 2 ;;
esac
dest="wheelhouse/$target"

# Project dependencies + the target's extra, straight from pyproject.toml (python >= 3.11 for
# tomllib); setuptools and wheel build the project itself inside the image.
reqs=$("$PY" - "$extras" <<'EOF'
import sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
reqs = list(project["dependencies"])
for extra in sys.argv[1].split(","):
    reqs += project["optional-dependencies"][extra]
reqs += ["setuptools>=68", "wheel"]
print("\n".join(sorted(set(reqs))))
EOF
)

if [ -f "$dest/requirements.txt" ] && [ "$(cat "$dest/requirements.txt")" = "$reqs" ] \
   && compgen -G "$dest/*.whl" >/dev/null; then
  echo "docker-wheelhouse: $dest is up to date ($(ls "$dest"/*.whl | wc -l) wheels)"
  exit 0
fi

# pip matches --platform tags exactly, so list every manylinux level the base image's glibc
# (Debian bookworm: 2.36) can load.
platforms=()
for minor in $(seq 36 -1 17); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done
platforms+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)
index=()
if [ -n "${TORCH_INDEX_URL:-}" ]; then index=(--extra-index-url "$TORCH_INDEX_URL"); fi

mkdir -p "$dest"
tmp_reqs=$(mktemp)
trap 'rm -f "$tmp_reqs"' EXIT
printf '%s\n' "$reqs" >"$tmp_reqs"
"$PY" -m pip download --quiet --only-binary :all: --python-version 3.11 --implementation cp \
  --abi cp311 "${platforms[@]}" "${index[@]}" --dest "$dest" -r "$tmp_reqs"
# Written last: an interrupted download is retried on the next run.
printf '%s\n' "$reqs" >"$dest/requirements.txt"
echo "docker-wheelhouse: $dest has $(ls "$dest"/*.whl | wc -l) wheels ($(du -sh "$dest" | cut -f1))"
