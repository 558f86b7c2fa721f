# warmfront in a container: `docker build -t warmfront .` on the official python:3.11-slim.
# Where no registry is reachable, scripts/build-warmfront-image builds this same file on a stand-in base
# made from Debian 12's packages (BASE=warmfront-pybase:3.11), and tests/test_warmfront_image.py runs it.
# Both bases give `python` on PATH, a pip that may install into it, /bin/sh, coreutils and useradd.
ARG BASE=python:3.11-slim
# The healthcheck's HTTP client: one static busybox binary (2 MB), so Docker's probe every 10 s costs a
# fork and a request instead of a Python interpreter. The build script's stand-in is Debian 12's
# busybox-static (BUSYBOX=warmfront-busybox:1.35); any image with a static /bin/busybox will do.
ARG BUSYBOX=busybox:1.36.1-musl
FROM ${BUSYBOX} AS busybox

FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/warmfront
# Dependencies first, in a layer of their own: a change to warmfront's code does not reinstall them.
# Exactly the locked set (scripts/lock-deps writes it): --no-deps, so nothing unlisted comes in, and
# wheels only, so nothing is compiled differently from one build to the next.
COPY requirements.lock ./
RUN python -m pip install --no-deps --only-binary=:all: --requirement requirements.lock
COPY --from=busybox /bin/busybox /usr/local/bin/busybox
COPY pyproject.toml ./
COPY README.md ./
COPY balancer ./balancer
COPY predictor ./predictor
COPY pools ./pools
COPY config ./config
# pip check fails the build when the lock no longer satisfies pyproject.toml: run scripts/lock-deps.
# A numeric user (USER 10001:10001 below) lets Kubernetes' runAsNonRoot verify it is not root.
RUN python -m pip install --no-deps . \
 && python -m pip check \
 && groupadd --system --gid 10001 warmfront \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/warmfront --create-home \
      --shell /usr/sbin/nologin warmfront \
 && mkdir -p /etc/warmfront && cp config/*.yaml /etc/warmfront/

USER 10001:10001
# Relative paths (the shipped routing.yaml's `state_dir: state`) land in the writable state volume.
WORKDIR /var/lib/warmfront
VOLUME ["/var/lib/warmfront"]
EXPOSE 8080 9090
# Follows the admin listener: set WARMFRONT_HEALTHZ too when `--admin` moves it.
ENV WARMFRONT_HEALTHZ=http://127.0.0.1:9090/healthz
# busybox wget exits non-zero on a refused connection or any status but 2xx; Docker's --timeout ends
# a hung one.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s \
  CMD busybox wget -q -O /dev/null "$WARMFRONT_HEALTHZ"
# Last, so that a new version or commit changes only the image's config, not a layer. VERSION's default is
# pyproject.toml's (tests/test_warmfront_image.py holds them equal); the build script passes both.
ARG VERSION=0.1.0
ARG REVISION=""
ARG SOURCE=""
LABEL org.opencontainers.image.title="warmfront" \
      org.opencontainers.image.description="A reverse-proxy load balancer that sees load coming: forecasts traffic per source and pre-warms backends before it arrives." \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}"
ENTRYPOINT ["warmfront"]
CMD ["run", "--config", "/etc/warmfront", "--listen", "0.0.0.0:8080", "--admin", "127.0.0.1:9090", "--state-dir", "/var/lib/warmfront"]
