# warmfront in a container: `docker build -t warmfront .` on the official python:3.11-slim.
# Where no registry is reachable, scripts/build-warmfront-image builds this same file on a stand-in base
# made from Debian 12's packages (BASE=warmfront-pybase:3.11), and tests/test_warmfront_image.py runs it.
# Both bases give `python` on PATH, a pip that may install into it, /bin/sh, coreutils and useradd.
ARG BASE=python:3.11-slim
FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/warmfront
# Dependencies first, in a layer of their own: a change to warmfront's code does not reinstall them.
COPY pyproject.toml ./
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
      >requirements.txt \
 && python -m pip install --requirement requirements.txt
COPY README.md ./
COPY balancer ./balancer
COPY predictor ./predictor
COPY pools ./pools
COPY config ./config
# A numeric user (USER 10001:10001 below) lets Kubernetes' runAsNonRoot verify it is not root.
RUN python -m pip install --no-deps . \
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
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s \
  CMD python -c "import os, sys, urllib.request; sys.exit(urllib.request.urlopen(os.environ['WARMFRONT_HEALTHZ'], timeout=2).status != 200)"
ENTRYPOINT ["warmfront"]
CMD ["run", "--config", "/etc/warmfront", "--listen", "0.0.0.0:8080", "--admin", "127.0.0.1:9090", "--state-dir", "/var/lib/warmfront"]
