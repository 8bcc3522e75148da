#!/bin/sh
# Generates the mosquitto config and go-auth's files-backend files from the environment
# (mosquitto cannot read environment variables), then runs mosquitto in the foreground as the
# container's main process.
#
#   LOCKERD_MOSQ_SECRET                required; the shared secret go-auth sends as ?mosq_secret=
#   LOCKERD_BACKEND_MQTT_USER          lockerd's own broker user (default lockerd-backend)
#   LOCKERD_BACKEND_MQTT_PASSWORD      required; its password (the files backend keeps a hash)
#   LOCKERD_BROKER_AUTH_CACHE_SECONDS  go-auth's cache time, 0 = no cache (default 30); lockerd
#                                      must get the same value (its revocation window)
#   MOSQUITTO_CONF_TEMPLATE            default /etc/mosquitto-lockerd/mosquitto.conf.template
#   MOSQUITTO_CONF                     default /etc/mosquitto/mosquitto.conf (written)
#   GOAUTH_FILES_DIR                   default /etc/mosquitto/go-auth (passwords, acls: written)
#   GOAUTH_PW_BIN                      default /mosquitto/pw (go-auth's password hasher)
#   MOSQUITTO_FILES_GROUP              default mosquitto: group that may read what is written
#   MOSQUITTO_BIN                      default /usr/sbin/mosquitto
#
# Nothing secret is printed: errors name the variable, never its value.
set -eu

template="${MOSQUITTO_CONF_TEMPLATE:-/etc/mosquitto-lockerd/mosquitto.conf.template}"
conf="${MOSQUITTO_CONF:-/etc/mosquitto/mosquitto.conf}"
files_dir="${GOAUTH_FILES_DIR:-/etc/mosquitto/go-auth}"
pw="${GOAUTH_PW_BIN:-/mosquitto/pw}"
group="${MOSQUITTO_FILES_GROUP-mosquitto}"
mosquitto="${MOSQUITTO_BIN:-/usr/sbin/mosquitto}"
backend_user="${LOCKERD_BACKEND_MQTT_USER:-lockerd-backend}"
cache_seconds="${LOCKERD_BROKER_AUTH_CACHE_SECONDS:-30}"

fail() {
    echo "entrypoint: $*" >&2
    exit 2
}

if [ -z "${LOCKERD_MOSQ_SECRET:-}" ]; then
    fail "LOCKERD_MOSQ_SECRET is not set (see docker/.env.example)"
fi
# It goes into a URL query string and a sed replacement: only URL-safe characters.
case "$LOCKERD_MOSQ_SECRET" in
    *[!A-Za-z0-9._~-]*) fail "LOCKERD_MOSQ_SECRET may only contain A-Z a-z 0-9 . _ ~ -" ;;
esac
if [ -z "${LOCKERD_BACKEND_MQTT_PASSWORD:-}" ]; then
    fail "LOCKERD_BACKEND_MQTT_PASSWORD is not set (see docker/.env.example)"
fi
# It also goes into LOCKERD_MQTT_URL (docker-compose.yml): URL-safe characters only.
case "$LOCKERD_BACKEND_MQTT_PASSWORD" in
    *[!A-Za-z0-9._~-]*) fail "LOCKERD_BACKEND_MQTT_PASSWORD may only contain A-Z a-z 0-9 . _ ~ -" ;;
esac
# A line of go-auth's password file ("user:hash") and ACL file ("user <name>").
case "$backend_user" in
    "" | *[!A-Za-z0-9._~-]*) fail "LOCKERD_BACKEND_MQTT_USER may only contain A-Z a-z 0-9 . _ ~ -" ;;
esac
case "$cache_seconds" in
    "" | *[!0-9]* | 0?*) fail "LOCKERD_BROKER_AUTH_CACHE_SECONDS must be 0 or a positive whole number of seconds" ;;
esac

# go-auth's cache: off for 0 (go-auth's TTL 0 would mean 60 s); a jitter of a tenth of the
# cache time, rounded down (lockerd/brokerauth/revocation.py counts the same).
if [ "$cache_seconds" -eq 0 ]; then
    cache=false
else
    cache=true
fi
jitter=$((cache_seconds / 10))

umask 077
mkdir -p "$(dirname "$conf")" "$files_dir"

# The files backend: lockerd's user with go-auth's PBKDF2 hash of its password, allowed
# everything. Nobody else is in these files; go-auth asks lockerd about everyone else.
hash=$("$pw" -p "$LOCKERD_BACKEND_MQTT_PASSWORD") || fail "$pw could not hash the backend password"
case "$hash" in
    PBKDF2\$*) ;;
    *) fail "$pw did not print a PBKDF2 hash" ;;
esac
printf '%s:%s\n' "$backend_user" "$hash" > "$files_dir/passwords.tmp"
printf 'user %s\ntopic readwrite #\n' "$backend_user" > "$files_dir/acls.tmp"

sed -e "s|\${LOCKERD_MOSQ_SECRET}|$LOCKERD_MOSQ_SECRET|g" \
    -e "s|\${GOAUTH_CACHE}|$cache|g" \
    -e "s|\${LOCKERD_BROKER_AUTH_CACHE_SECONDS}|$cache_seconds|g" \
    -e "s|\${GOAUTH_JITTER_SECONDS}|$jitter|g" \
    -e "s|\${GOAUTH_FILES_DIR}|$files_dir|g" \
    "$template" > "$conf.tmp"
if grep -q '\${' "$conf.tmp"; then
    fail "unsubstituted \${...} left in $conf"
fi

# mosquitto drops root for its own user and must still read these; nobody else may (the
# config holds the secret, the password file a hash).
for file in "$conf.tmp" "$files_dir/passwords.tmp" "$files_dir/acls.tmp"; do
    if [ -n "$group" ]; then
        chgrp "$group" "$file"
        chmod 0640 "$file"
    else
        chmod 0600 "$file"
    fi
done
if [ -n "$group" ]; then
    chgrp "$group" "$files_dir"
    chmod 0750 "$files_dir"
fi
mv "$files_dir/passwords.tmp" "$files_dir/passwords"
mv "$files_dir/acls.tmp" "$files_dir/acls"
mv "$conf.tmp" "$conf"
exec "$mosquitto" -c "$conf"
