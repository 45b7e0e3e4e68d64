# syntax=docker/dockerfile:1
# fapi-gateway: multi-stage build. The final image has no compilers, no pip, runs as UID 10001
# and works with a read-only root filesystem (only /tmp is written, mounted as a volume).
#
# The example below is the one tests/ops/test_docker_example.py runs (config/examples/docker/):
#
#   docker build -t fapi-gateway .
#   docker run --rm --read-only --tmpfs /tmp -p 8443:8443 -p 8442:8442 \
#     -v "$PWD/config/examples/docker:/etc/gateway/config:ro" -v "$PWD/certs/dev:/etc/gateway/tls:ro" \
#     -e PUBLIC_ORIGIN=https://localhost:8443 -e AS_ISSUER=https://as.example \
#     -e AS_JWKS_URI=https://as.example/jwks -e UPSTREAM_URL=http://upstream.example:8080 \
#     fapi-gateway run --config /etc/gateway/config/gateway.yaml
#   curl -i --cacert certs/dev/ca.pem https://localhost:8443/accounts    # 401 with its challenge

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: the virtualenv the image runs, from the hash-pinned lock, and its SBOM -----------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY requirements.txt requirements-sbom.txt pyproject.toml README.md ./
COPY gateway ./gateway
# Every dependency, transitive ones included, must match a hash in requirements.txt (refreshed by
# .ci/lock); the project itself is built with the locked setuptools and installed without deps.
# All dependencies ship manylinux wheels for CPython 3.11, so no compiler is installed even here.
# Byte-code is compiled at install time (the root filesystem is read-only at run time).
RUN python -m venv /opt/gateway \
 && /opt/gateway/bin/pip install --require-hashes -r requirements.txt \
 && /opt/gateway/bin/pip install --no-deps --no-build-isolation . \
 && /opt/gateway/bin/pip uninstall --yes setuptools
# CycloneDX SBOM of exactly what the image runs (that venv, read after install), by a tool from
# its own hash-pinned lock in another venv, so the tool itself is not shipped.
RUN python -m venv /opt/sbom \
 && /opt/sbom/bin/pip install --require-hashes -r requirements-sbom.txt \
 && /opt/sbom/bin/cyclonedx-py environment --output-format JSON --output-reproducible \
      --output-file /opt/gateway/sbom.cdx.json /opt/gateway/bin/python

# --- runtime ---------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="fapi-gateway" \
      org.opencontainers.image.description="Resource-server gateway for sender-constrained OAuth 2.0 tokens (mTLS, DPoP)" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin gateway
# Same base image, same path: the venv built above runs as it is. pip is removed from it, so
# nothing can be installed into a running container. The SBOM ships at /opt/gateway/sbom.cdx.json.
COPY --from=build /opt/gateway /opt/gateway
RUN /opt/gateway/bin/python -m pip uninstall --yes pip \
 && mkdir -p /etc/gateway/config /etc/gateway/tls /etc/gateway/client-ca

ENV PATH=/opt/gateway/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GATEWAY_ADMIN_PORT=8442

# Configuration and certificates are mounted; /tmp is the only writable path.
VOLUME ["/etc/gateway/config", "/etc/gateway/tls", "/etc/gateway/client-ca", "/tmp"]
WORKDIR /etc/gateway
USER 10001:10001
EXPOSE 8443 8442

# No curl in the image: the stdlib does the probe. Exit 0 only on HTTP 200 from /healthz.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os,sys,urllib.request as u; sys.exit(0 if u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('GATEWAY_ADMIN_PORT', '8442'), timeout=2).status == 200 else 1)"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["gateway"]
CMD ["run", "--config", "/etc/gateway/config/gateway.yaml"]
