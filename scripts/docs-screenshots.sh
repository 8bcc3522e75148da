#!/bin/sh
# Regenerates the screenshots of docs/operators.md from the console's browser tests.
#
# The tests (tests/lockerd/console, real lockerd + Mosquitto + simulated devices, headless
# Chromium at 1366x768 and 390 px) save their screenshots in test-artifacts/console/; this
# script runs them and copies the ones the walk-through shows to docs/images/console-*.png.
# Needs what scripts/test.sh installs (Chromium, chromium-driver, Mosquitto, the venv).
set -eu
cd "$(dirname "$0")/.."

rm -rf test-artifacts/console
.venv/bin/python -m pytest -q -p no:cacheprovider tests/lockerd/console

mkdir -p docs/images
for shot in sign-in fleet bank history open out-of-service grants users groups alerts \
    audit-filtered metrics failed decommissioned fleet-phone bank-phone; do
    if [ -f "test-artifacts/console/$shot.png" ]; then
        cp "test-artifacts/console/$shot.png" "docs/images/console-$shot.png"
    else
        echo "docs-screenshots: no $shot.png (its test did not run)" >&2
    fi
done
echo "docs/images updated"
