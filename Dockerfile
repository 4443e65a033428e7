# The latentserve service image: the gRPC server with serving dependencies only (no torch),
# running as a non-root user, the shipped models baked in at /models (mount a folder there to
# replace them), one worker process per usable core (LATENTSERVE_WORKERS=auto: the container's
# CPU affinity and cgroup CPU quota). The training image is Dockerfile.train.
#
#   docker build -t latentserve .
#
# Build args:
#   BASE_IMAGE      a Python 3.11 image (default python:3.11-slim)
#   USE_WHEELHOUSE  1 = install only from ./wheelhouse/serve/ with pip --no-index (fill it on
#                   the host with scripts/docker-wheelhouse.sh serve); 0 (default) = from PyPI
#   RUNTIME         cpu (default) | gpu: onnxruntime-gpu with the CUDA and cuDNN libraries as
#                   pip wheels (run on an NVIDIA host with LATENTSERVE_DEVICE=cuda or auto)
#   ONNXRUNTIME_GPU the pip requirement used for RUNTIME=gpu; pin an older onnxruntime-gpu
#                   (CUDA 12) where the host's NVIDIA driver does not support the newest CUDA
#
# Stages are kept to what this image needs: Docker's classic builder (no BuildKit) builds
# every stage before the target, so the torch-heavy training image lives in its own file.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ARG USE_WHEELHOUSE=0
ARG RUNTIME=cpu
ARG ONNXRUNTIME_GPU="onnxruntime-gpu[cuda,cudnn]>=1.21"
ENV USE_WHEELHOUSE=${USE_WHEELHOUSE} PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
COPY scripts/docker-install.sh /usr/local/bin/docker-install.sh
COPY pyproject.toml README.md /src/
# The glob keeps the build working where wheelhouse/ does not exist (the online default).
COPY pyproject.toml wheelhouse/serv[e] /wheelhouse/serve/
# Dependencies before sources, so a code change reuses this layer.
RUN docker-install.sh deps serve serve
# Both onnxruntime wheels own the onnxruntime/ package: remove the CPU one before adding the
# CUDA one, and record where pip put the CUDA libraries for the dynamic loader.
RUN if [ "$RUNTIME" = gpu ]; then \
      /opt/venv/bin/python -m pip uninstall -y onnxruntime \
      && docker-install.sh pkgs serve "$ONNXRUNTIME_GPU" \
      && find /opt/venv/lib/python3.11/site-packages/nvidia -name 'lib*.so*' -printf '%h\n' \
         | sort -u > /opt/venv/ld-nvidia.conf \
      && test -s /opt/venv/ld-nvidia.conf; \
    elif [ "$RUNTIME" != cpu ]; then echo "RUNTIME must be cpu or gpu, got '$RUNTIME'" >&2; exit 1; \
    fi
COPY latentserve/ /src/latentserve/
COPY serving/ /src/serving/
# serving/shipped_models links to ../models: the wheel built here carries the shipped models
# as the package's default models folder (the server below still reads the /models mount).
COPY models/ /src/models/
# pip and setuptools are not needed at run time (~25 MB).
RUN docker-install.sh project serve \
 && /opt/venv/bin/python -m pip uninstall -y -q setuptools pip

FROM ${BASE_IMAGE} AS serve
COPY --from=build /opt/venv /opt/venv
# A fixed uid/gid (shared with Dockerfile.train) so volumes and mounted folders can match it.
# onnxruntime keeps a small state file under $HOME, hence a real home directory.
RUN groupadd --gid 10001 latentserve \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/latentserve \
      --shell /usr/sbin/nologin latentserve \
 && if [ -f /opt/venv/ld-nvidia.conf ]; then \
      cp /opt/venv/ld-nvidia.conf /etc/ld.so.conf.d/nvidia-pip.conf && ldconfig; fi
COPY scripts/docker-healthcheck.sh /usr/local/bin/latentserve-healthcheck
# Owned by the service user so a named volume first filled from here can be rewritten by the
# train profile (same uid); the server itself only reads it.
COPY --chown=10001:10001 models/ /models/
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LATENTSERVE_HOST=0.0.0.0 \
    LATENTSERVE_PORT=50051 \
    LATENTSERVE_HTTP_PORT=8000 \
    LATENTSERVE_METRICS_PORT=9090 \
    LATENTSERVE_MODELS_DIR=/models \
    LATENTSERVE_WORKERS=auto
USER 10001:10001
WORKDIR /home/latentserve
# gRPC (native and v2), HTTP (v2 REST and the explorer page), Prometheus metrics.
EXPOSE 50051 8000 9090
# Asks grpc.health.v1 over loopback: healthy only when SERVING (warm-up done, not draining).
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 CMD ["latentserve-healthcheck"]
ENTRYPOINT ["latent-serve"]
