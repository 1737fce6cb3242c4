# Mosquitto 2 for RoadWatch, configured with the native runner's own template
# (deploy/mosquitto/mosquitto.conf and acl), rendered at container start.
FROM debian:bookworm-slim

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# mosquitto-clients for the healthcheck (an authenticated connection); gettext-base for
# envsubst, which renders the ${NAME} placeholders of the template.
# The server's account is created first with a fixed id, so that the files of its named
# volume keep their owner across rebuilds; the package then uses it.
RUN groupadd --system --gid 901 mosquitto \
    && useradd --system --uid 901 --gid mosquitto --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin mosquitto

RUN apt-get update \
    && apt-get install -y --no-install-recommends mosquitto mosquitto-clients gettext-base \
    && rm -rf /var/lib/apt/lists/* \
    && install -d -o mosquitto -g mosquitto -m 0750 /var/lib/mosquitto \
    && install -d -o mosquitto -g mosquitto -m 0755 /var/lib/roadwatch-accounts

COPY deploy/mosquitto/mosquitto.conf deploy/mosquitto/acl /etc/roadwatch/mosquitto/
COPY deploy/docker/mosquitto-entrypoint.sh /usr/local/bin/roadwatch-mosquitto

# The broker's folder: password file, ACL, rendered config and persistence (a named volume);
# its certificate and key are mounted from the host (compose.yaml).
ENV ROADWATCH_MOSQUITTO_DIR=/var/lib/mosquitto \
    ROADWATCH_ACCOUNTS_DIR=/var/lib/roadwatch-accounts \
    ROADWATCH_ITS_PREFIX=its \
    ROADWATCH_MQTT_PORT=1883 \
    ROADWATCH_MQTT_BIND=0.0.0.0 \
    ROADWATCH_MQTT_TLS_PORT=8883 \
    ROADWATCH_MQTT_TLS_BIND=0.0.0.0 \
    ROADWATCH_MOSQUITTO_TLS_DIR=/etc/roadwatch/tls

USER 901
EXPOSE 1883 8883
ENTRYPOINT ["roadwatch-mosquitto"]
