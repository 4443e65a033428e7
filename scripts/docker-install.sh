#!/bin/sh
# Used inside `docker build` only (see Dockerfile): install into the image's virtualenv
# /opt/venv either from PyPI (default) or, with the build arg USE_WHEELHOUSE=1, only from
# the wheels that scripts/docker-wheelhouse.sh put in /wheelhouse/<target>/.
#
#   docker-install.sh deps TARGET EXTRAS   the project's dependencies + EXTRAS (comma list),
#                                          read from /src/pyproject.toml
#   docker-install.sh project TARGET       the project itself from /src (no dependencies)
#   docker-install.sh pkgs TARGET REQ...   extra requirements (e.g. onnxruntime-gpu)
set -eu
mode=$1
target=$2
shift 2
if [ "${USE_WHEELHOUSE:-0}" = 1 ]; then
  if ! ls /wheelhouse/"$target"/*.whl >/dev/null 2>&1; then
    echo "USE_WHEELHOUSE=1 but wheelhouse/$target/ has no wheels: run scripts/docker-wheelhouse.sh $target first" >&2
    exit 1
  fi
  # Environment rather than flags so pip's isolated build environment (setuptools, wheel)
  # is installed offline too.
  export PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheelhouse/$target
fi
pip() { /opt/venv/bin/python -m pip --disable-pip-version-check --no-cache-dir "$@"; }
case "$mode" in
  deps)
    /opt/venv/bin/python - "$1" >/tmp/requirements.txt <<'EOF'
import sys, tomllib
project = tomllib.load(open("/src/pyproject.toml", "rb"))["project"]
reqs = list(project["dependencies"])
for extra in sys.argv[1].split(","):
    reqs += project["optional-dependencies"][extra]
print("\n".join(reqs))
EOF
    pip install -r /tmp/requirements.txt
    ;;
  project) pip install --no-deps /src ;;
  pkgs) pip install "$@" ;;
  *) echo "usage: $0 deps|project|pkgs TARGET ..." >&2; exit 2 ;;
esac
