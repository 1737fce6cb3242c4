# Apache 2.4 for RoadWatch: the native runner's own configuration (deploy/apache/httpd.conf,
# driven by ROADWATCH_* variables) serving web/ and proxying /api/ and /http-bind.
# web/vendor/ must exist in the build context: deploy/native/bootstrap.sh builds it from npm
# (make compose-up and make compose-test run it), so the image needs no npm of its own.
FROM debian:bookworm-slim

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

RUN apt-get update \
    && apt-get install -y --no-install-recommends apache2 \
    && rm -rf /var/lib/apt/lists/* \
    && install -d -o www-data -g www-data -m 0750 /run/roadwatch-apache

COPY deploy/apache/httpd.conf /etc/roadwatch/apache/httpd.conf
COPY web/ /srv/roadwatch/web/

# An unprivileged port inside the container; compose publishes it as ROADWATCH_HTTP_PORT.
ENV ROADWATCH_APACHE_DIR=/run/roadwatch-apache \
    ROADWATCH_APACHE_USER=www-data \
    ROADWATCH_WEB_ROOT=/srv/roadwatch/web \
    ROADWATCH_HTTP_BIND=0.0.0.0 \
    ROADWATCH_HTTP_PORT=8080 \
    ROADWATCH_API_UPSTREAM=http://api:8000 \
    ROADWATCH_BOSH_UPSTREAM=http://prosody:5280

# www-data
USER 33
EXPOSE 8080
ENTRYPOINT ["apache2", "-f", "/etc/roadwatch/apache/httpd.conf", "-DFOREGROUND"]
