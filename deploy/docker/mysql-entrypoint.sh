#!/bin/bash
# MariaDB in a container, as the native runner does it (src/roadwatch/runner/mariadb.py):
# an empty datadir is initialised with socket-only administration (no administrator password
# to generate or leak); then a private server without networking creates or updates the
# databases and accounts from the environment; then the real server replaces this script.
set -euo pipefail

config=/etc/roadwatch/mysql/roadwatch.cnf
datadir=/var/lib/mysql
socket=/run/mysqld/mysqld.sock
identifier='^[A-Za-z0-9_]{1,64}$'
user_name='^[A-Za-z0-9_.-]{1,80}$'

# The config file must come first: only its settings apply, never /etc/mysql's.
server=(mariadbd "--defaults-file=$config" "--datadir=$datadir" "--socket=$socket"
        "--pid-file=/run/mysqld/mariadbd.pid")

if [ ! -d "$datadir/mysql" ]; then
  echo "initialising the MariaDB datadir"
  mariadb-install-db "--defaults-file=$config" "--datadir=$datadir" "--user=$(id -un)" \
    --auth-root-authentication-method=socket --skip-test-db --skip-name-resolve >/dev/null
fi

sql_string() {
  # A quoted SQL string literal (backslashes and quotes escaped).
  local value=${1//\\/\\\\}
  printf "'%s'" "${value//\'/\\\'}"
}

provision_sql() {
  local database user password host
  while read -r database user password; do
    [[ $database =~ $identifier ]] || { echo "database name '$database' is not a plain identifier" >&2; exit 1; }
    [[ $user =~ $user_name ]] || { echo "user name '$user' has unexpected characters" >&2; exit 1; }
    [ -n "$password" ] || { echo "no password for the MySQL user $user: set it in .env" >&2; exit 1; }
    echo "CREATE DATABASE IF NOT EXISTS \`$database\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;"
    # From anywhere (the other containers) and from the local socket.
    for host in % localhost; do
      echo "CREATE USER IF NOT EXISTS '$user'@'$host' IDENTIFIED BY $(sql_string "$password");"
      echo "ALTER USER '$user'@'$host' IDENTIFIED BY $(sql_string "$password");"
      echo "GRANT ALL PRIVILEGES ON \`$database\`.* TO '$user'@'$host';"
    done
  done <<EOF_ACCOUNTS
${ROADWATCH_MYSQL_DATABASE:-roadwatch} ${ROADWATCH_MYSQL_USER:-roadwatch} ${ROADWATCH_MYSQL_PASSWORD:-}
${ROADWATCH_PROSODY_DB_NAME:-prosody} ${ROADWATCH_PROSODY_DB_USER:-prosody} ${ROADWATCH_PROSODY_DB_PASSWORD:-}
EOF_ACCOUNTS
}

statements=$(provision_sql)
"${server[@]}" --skip-networking --innodb-buffer-pool-load-at-startup=OFF &
private=$!
for _ in $(seq 1 600); do
  mariadb-admin "--socket=$socket" --silent ping >/dev/null 2>&1 && break
  kill -0 "$private" 2>/dev/null || { echo "mariadbd exited during start-up" >&2; exit 1; }
  sleep 0.1
done
mariadb "--socket=$socket" <<<"$statements"
mariadb-admin "--socket=$socket" shutdown
wait "$private" || true
unset ROADWATCH_MYSQL_PASSWORD ROADWATCH_PROSODY_DB_PASSWORD statements
echo "databases and accounts provisioned"

exec "${server[@]}" --port=3306 --bind-address=0.0.0.0
