# syntax=docker/dockerfile:1
# The policy gateway: `gateway run` with the proxy on 8080 and the admin port on 9901.
#
#   docker build -t policy-gateway .
#   docker run --rm -p 8080:8080 -p 9901:9901 --stop-timeout 45 \
#     -v "$PWD/policies:/etc/gateway:ro" policy-gateway
#
# Mount a directory over /etc/gateway (not a single file) so hot reload sees changes.
# See docs/operations.md.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: a wheel for the gateway and for each of its dependencies ----------------------
# The gateway's wheel has its request path compiled with mypyc (setup.py), which needs a
# C compiler, mypy, and the dependencies installed for mypy to check against.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY gateway ./gateway
RUN pip install "setuptools>=68" wheel "mypy>=1.10" types-PyYAML \
    && GATEWAY_COMPILE=0 pip wheel --wheel-dir /wheels . \
    && pip install --no-index --find-links=/wheels policy-gateway \
    && rm /wheels/policy_gateway-*.whl \
    && pip wheel --no-build-isolation --no-deps --wheel-dir /wheels .

# The default policy file is the example, listening on every interface: a container's
# loopback is its own. The greps fail the build if the example's layout ever changes.
COPY policies/example.yaml /src/gateway.yaml
RUN sed -i \
        -e 's/^listen: 127\.0\.0\.1:/listen: 0.0.0.0:/' \
        -e 's/^admin: 127\.0\.0\.1:/admin: 0.0.0.0:/' \
        /src/gateway.yaml \
    && grep -q '^listen: 0\.0\.0\.0:8080' /src/gateway.yaml \
    && grep -q '^admin: 0\.0\.0\.0:9901' /src/gateway.yaml

# ---- runtime: the wheels installed, nothing else from the build ---------------------------
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="policy-gateway" \
      org.opencontainers.image.description="A reverse proxy sidecar that applies declarative YAML policies in front of a legacy HTTP service." \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GATEWAY_CONFIG=/etc/gateway/gateway.yaml \
    GATEWAY_HEALTHCHECK_URL=http://127.0.0.1:9901/healthz

RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels /wheels/policy_gateway-*.whl \
    && python -c "import sys; from gateway import build; print('gateway:', build.describe()); sys.exit(not build.compiled_modules())" \
    && groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin gateway

COPY --from=build /src/gateway.yaml /etc/gateway/gateway.yaml

# Numeric, so Kubernetes can verify runAsNonRoot.
USER 10001:10001
WORKDIR /etc/gateway

EXPOSE 8080 9901

# SIGTERM starts the graceful shutdown: /readyz 503, pre_stop_delay, drain, exit 0.
STOPSIGNAL SIGTERM

# No curl in the slim image: ask the admin port's /healthz with Python.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['GATEWAY_HEALTHCHECK_URL'], timeout=2).read()"]

ENTRYPOINT ["gateway"]
CMD ["run", "-c", "/etc/gateway/gateway.yaml"]
