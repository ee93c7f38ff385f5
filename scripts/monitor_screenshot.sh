#!/usr/bin/env bash
# Regenerates docs/monitoring.png: runs the monitor page's browser test, which takes the
# screenshot of the page over its real traffic and, with UPDATE_SCREENSHOT=1, copies it there.
set -euo pipefail
cd "$(dirname "$0")/.."
UPDATE_SCREENSHOT=1 .venv/bin/python -m pytest -q -p no:cacheprovider \
    tests/test_monitor_page.py -k test_the_page_shows_what_stats_returns
