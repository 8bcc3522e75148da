#!/bin/sh
# Generates the mosquitto config from the template (mosquitto cannot read environment
# variables), then runs mosquitto in the foreground as the container's main process.
#
#   LOCKERD_MOSQ_SECRET      required; the shared secret go-auth sends as ?mosq_secret=
#   MOSQUITTO_CONF_TEMPLATE  default /etc/mosquitto-lockerd/mosquitto.conf.template
#   MOSQUITTO_CONF           default /etc/mosquitto/mosquitto.conf (written)
#   MOSQUITTO_BIN            default /usr/sbin/mosquitto
set -eu

template="${MOSQUITTO_CONF_TEMPLATE:-/etc/mosquitto-lockerd/mosquitto.conf.template}"
conf="${MOSQUITTO_CONF:-/etc/mosquitto/mosquitto.conf}"
mosquitto="${MOSQUITTO_BIN:-/usr/sbin/mosquitto}"

if [ -z "${LOCKERD_MOSQ_SECRET:-}" ]; then
    echo "entrypoint: LOCKERD_MOSQ_SECRET is not set (see docker/.env.example)" >&2
    exit 2
fi
# It goes into a URL query string and a sed replacement: only URL-safe characters.
case "$LOCKERD_MOSQ_SECRET" in
    *[!A-Za-z0-9._~-]*)
        echo "entrypoint: LOCKERD_MOSQ_SECRET may only contain A-Z a-z 0-9 . _ ~ -" >&2
        exit 2
        ;;
esac

umask 077
mkdir -p "$(dirname "$conf")"
sed "s|\${LOCKERD_MOSQ_SECRET}|$LOCKERD_MOSQ_SECRET|g" "$template" > "$conf.tmp"
if grep -q '\${' "$conf.tmp"; then
    echo "entrypoint: unsubstituted \${...} left in $conf" >&2
    exit 2
fi
# mosquitto drops root for its own user and must still be able to read the file.
chmod 0644 "$conf.tmp"
mv "$conf.tmp" "$conf"
exec "$mosquitto" -c "$conf"
