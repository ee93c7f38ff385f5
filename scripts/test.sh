#!/usr/bin/env bash
# Installs what the tests need (redis-server, redis-cli, openssl, a venv with the test dependencies) and runs
# the whole suite.  Extra arguments go to pytest.  The Redis tests start their own
# redis-server on a free loopback port; with GLM_GUARD_REQUIRE_REDIS=1 (set here) a missing
# server fails them instead of skipping them.
set -euo pipefail
cd "$(dirname "$0")/.."

# redis-cli (redis-tools) builds the test Cluster; openssl makes the TLS tests' certificates.
missing=""
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
command -v redis-cli >/dev/null 2>&1 || missing="$missing redis-tools"
command -v openssl >/dev/null 2>&1 || missing="$missing openssl"
if [ -n "$missing" ]; then
    echo "installing$missing (Debian packages)..." >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade "pip>=25.1"
.venv/bin/python -m pip install -q --disable-pip-version-check -e . --group test

export GLM_GUARD_REQUIRE_REDIS=1
exec .venv/bin/python -m pytest "$@"
