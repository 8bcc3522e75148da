#!/usr/bin/env bash
# Installs lockerd and runs it on the embedded defaults: SQLite file ./lockerd.db, HTTP on
# 127.0.0.1:8080, and the broker from LOCKERD_MQTT_URL, or a local Mosquitto started here if
# nothing listens on 127.0.0.1:1883.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh

if [ -z "${LOCKERD_MQTT_URL:-}" ] && ! (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null; then
  mkdir -p .run
  printf 'listener 1883 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location %s/\n' \
    "$PWD/.run" > .run/mosquitto.conf
  mosquitto -c .run/mosquitto.conf -d
  echo "serve: started a local Mosquitto on 127.0.0.1:1883 (config .run/mosquitto.conf)" >&2
fi
export LOCKERD_ADMIN_TOKEN=${LOCKERD_ADMIN_TOKEN:-$(.venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(24))')}
echo "serve: admin token: $LOCKERD_ADMIN_TOKEN  (dashboard: http://${LOCKERD_HTTP:-127.0.0.1:8080}/dashboard)" >&2
exec .venv/bin/lockerd --log-format console serve "$@"
