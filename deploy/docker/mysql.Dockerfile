# MariaDB 10.11 for RoadWatch with the native runner's own server settings
# (deploy/mysql/roadwatch.cnf). The entrypoint initialises the datadir once and, at every
# start, creates or updates the databases and accounts of RoadWatch and Prosody.
FROM debian:bookworm-slim

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# The server's account is created first with a fixed id, so that the files of its named
# volume keep their owner across rebuilds; the package then uses it.
RUN groupadd --system --gid 900 mysql \
    && useradd --system --uid 900 --gid mysql --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin mysql

RUN apt-get update \
    && apt-get install -y --no-install-recommends mariadb-server mariadb-client \
    && rm -rf /var/lib/apt/lists/* /var/lib/mysql \
    && install -d -o mysql -g mysql -m 0750 /var/lib/mysql \
    && install -d -o mysql -g mysql -m 0755 /run/mysqld

COPY deploy/mysql/roadwatch.cnf /etc/roadwatch/mysql/roadwatch.cnf
COPY deploy/docker/mysql-entrypoint.sh /usr/local/bin/roadwatch-mysql

USER 900
EXPOSE 3306
ENTRYPOINT ["roadwatch-mysql"]
