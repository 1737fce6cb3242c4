# One image for every RoadWatch Python service (simulator, gateway, collector, api); each
# compose service runs it with its own command. Built from the repository root:
#   docker build -f deploy/docker/python.Dockerfile .
# The dependencies come as wheels prepared on the host (deploy/compose/prepare.sh) at the
# versions the tests ran with, so the build installs them offline.
FROM debian:bookworm-slim

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# python3-venv: the same interpreter package the native runner uses (deploy/native/bootstrap.sh).
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

# An unprivileged account; its home holds the state the services write (status files, the
# gateway's detection snapshots). The account registry's folder belongs to the broker's user
# (901, deploy/docker/mosquitto.Dockerfile), which the `accounts` tool runs as.
RUN groupadd --gid 10001 roadwatch \
    && useradd --uid 10001 --gid roadwatch --home-dir /var/lib/roadwatch \
       --create-home --shell /usr/sbin/nologin roadwatch \
    && install -d -o roadwatch -g roadwatch /var/lib/roadwatch/gateway \
    && install -d -o 901 -g 901 -m 0755 /var/lib/roadwatch-accounts

COPY build/docker/wheels/ /tmp/wheels/
RUN python3 -m venv /opt/roadwatch \
    && /opt/roadwatch/bin/pip install --no-cache-dir --no-index --find-links=/tmp/wheels \
       /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels

# RoadWatch itself, from the same source tree as the native runner.
COPY pyproject.toml README.md /tmp/roadwatch/
COPY src/ /tmp/roadwatch/src/
RUN /opt/roadwatch/bin/pip install --no-cache-dir --no-index --no-deps --no-build-isolation \
       /tmp/roadwatch \
    && rm -rf /tmp/roadwatch

# The shared deploy/ files the services read (the zones of the demo city).
COPY deploy/zones/ /opt/roadwatch/app/deploy/zones/
COPY deploy/docker/python-entrypoint.sh /usr/local/bin/roadwatch-entrypoint
COPY deploy/docker/python-healthcheck.py /usr/local/bin/roadwatch-healthcheck

ENV PATH=/opt/roadwatch/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ROADWATCH_REPO_DIR=/opt/roadwatch/app \
    ROADWATCH_RUN_DIR=/var/lib/roadwatch \
    ROADWATCH_ENV_FILE=""

USER 10001
WORKDIR /var/lib/roadwatch
ENTRYPOINT ["roadwatch-entrypoint"]
CMD ["--help"]
