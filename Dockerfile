# warmfront in a container. No base image can be pulled on the build machine used for
# development, so this file is kept correct by reading and by tests of the entrypoint and paths.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /opt/warmfront
COPY pyproject.toml README.md ./
COPY balancer ./balancer
COPY predictor ./predictor
COPY pools ./pools
COPY config ./config
RUN pip install . \
 && useradd --system --uid 10001 --home-dir /var/lib/warmfront --create-home warmfront \
 && mkdir -p /etc/warmfront && cp config/*.yaml /etc/warmfront/

USER warmfront
VOLUME ["/var/lib/warmfront"]
EXPOSE 8080 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9090/healthz', timeout=2).status == 200 else 1)"
ENTRYPOINT ["warmfront"]
CMD ["run", "--config", "/etc/warmfront", "--listen", "0.0.0.0:8080", "--admin", "127.0.0.1:9090", "--state-dir", "/var/lib/warmfront"]
