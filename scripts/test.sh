#!/usr/bin/env bash
# Installs everything the tests need (Mosquitto included) and runs the whole suite:
# lint, type check, tests. PostgreSQL runs too when a server is reachable.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh chromium chromium-driver mosquitto-dev libcurl4-openssl-dev libssl-dev gcc

if [ -z "${LOCKERD_TEST_POSTGRES_URL:-}" ] && command -v pg_isready >/dev/null \
   && pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  export LOCKERD_TEST_POSTGRES_URL="postgresql://postgres@127.0.0.1:5432/test"
fi

.venv/bin/ruff check --no-cache .
.venv/bin/ruff format --check --no-cache .
.venv/bin/mypy
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
