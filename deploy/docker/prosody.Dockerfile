# Prosody 0.12 for RoadWatch with the native runner's own configuration
# (deploy/prosody/prosody.cfg.lua and its modules), storing its data in MySQL.
FROM debian:bookworm-slim

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# The server's account is created first with a fixed id, so that the files of its named
# volume keep their owner across rebuilds; the package then uses it.
RUN groupadd --system --gid 902 prosody \
    && useradd --system --uid 902 --gid prosody --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin prosody

# The same packages as the native runner: the MySQL storage driver and the DNS library.
RUN apt-get update \
    && apt-get install -y --no-install-recommends prosody lua-dbi-mysql lua-unbound \
    && rm -rf /var/lib/apt/lists/*

COPY deploy/prosody/ /etc/roadwatch/prosody/
COPY deploy/docker/prosody-entrypoint.sh /usr/local/bin/roadwatch-prosody
COPY deploy/docker/prosody-account.sh /usr/local/bin/roadwatch-xmpp-account

# Listen on the container's network (the file's default is loopback, for the native runner);
# the certificate and key for c2s are mounted from the host (compose.yaml).
ENV ROADWATCH_PROSODY_INTERFACE=* \
    ROADWATCH_PROSODY_DATA_DIR=/var/lib/prosody \
    ROADWATCH_PROSODY_TLS_DIR=/etc/roadwatch/tls \
    ROADWATCH_XMPP_PORT=5222 \
    ROADWATCH_BOSH_PORT=5280 \
    LANG=C.UTF-8

# Prosody refuses to run as root.
USER 902
WORKDIR /var/lib/prosody
EXPOSE 5222 5280
ENTRYPOINT ["roadwatch-prosody"]
