#!/usr/bin/env bash
# Installs what the tests need (Debian packages, a venv with the test dependencies) and runs
# the whole suite.  Extra arguments go to pytest.  The Redis tests start their own
# redis-server on a free loopback port; with GLM_GUARD_REQUIRE_REDIS=1 (set here) a missing
# server fails them instead of skipping them.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests use, installed only when missing: redis-server, and redis-cli
# (redis-tools) to build the test Cluster; openssl for the TLS tests' certificates; chromium
# and its driver for the monitor page's browser test; prometheus for promtool (the alert rules).
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing ${missing[*]} (Debian packages)..." >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade "pip>=25.1"
.venv/bin/python -m pip install -q --disable-pip-version-check -e . --group test
# zai-sdk (Zhipu's current SDK) pins a pyjwt that zhipuai's pin excludes, so pip refuses the pair;
# its other requirements are zhipuai's, already installed, so it goes in on its own.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps "zai-sdk>=0.2.3"

export GLM_GUARD_REQUIRE_REDIS=1
exec .venv/bin/python -m pytest "$@"
