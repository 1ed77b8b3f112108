# syntax=docker/dockerfile:1
# evolution-reconciler: `docker build -t evolution-reconciler .`
# The build stage installs the package into a virtualenv; the final stage copies only that
# virtualenv onto a clean slim image, so no compiler, pip cache or source tree ships.

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY reconciler ./reconciler
RUN /opt/venv/bin/pip install . \
    && /opt/venv/bin/python -m compileall -q /opt/venv/lib

FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="evolution-reconciler" \
      org.opencontainers.image.description="Keeps Evolution API servers holding exactly the WhatsApp instances the platform's database says should exist." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="MIT"

RUN groupadd --system --gid 10001 reconciler \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin reconciler

COPY --from=build /opt/venv /opt/venv
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RECONCILER_HTTP_ADDR=0.0.0.0:9478 \
    RECONCILER_LOG_FORMAT=json

# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
WORKDIR /tmp
EXPOSE 9478
STOPSIGNAL SIGTERM
# /healthz answers 200 while the control loop ticks; the port follows RECONCILER_HTTP_ADDR.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('RECONCILER_HTTP_ADDR', '0.0.0.0:9478').rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]

ENTRYPOINT ["reconciler"]
CMD ["run"]
