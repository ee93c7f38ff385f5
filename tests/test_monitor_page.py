"""The monitor page in a real headless browser (Debian's chromium through Selenium), over real traffic.

Calls go through the decorators to the GLM simulator; the monitor serves the page and the
JSON from this process's recorder; the browser's figures are read back and compared with
``/api/v1/monitoring/stats``.  ``UPDATE_SCREENSHOT=1`` also copies the screenshot to
``docs/monitoring.png`` (``scripts/monitor_screenshot.sh``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from glm_guard.backends._local import LocalBackend
from glm_guard.backends._redis import RedisBackend
from glm_guard.monitoring import create_app
from glm_guard.monitoring._recorder import RECORDER
from glm_guard.monitoring._server import MonitorServer

from .monitor_traffic import API_KEY, PROMPT, more_calls, real_traffic

pytestmark = pytest.mark.usefixtures("fresh_stats")

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "glm_guard" / "monitoring" / "static"
TOKEN = "page-t0ken-XYZ"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
UPDATE_SCREENSHOT = os.environ.get("UPDATE_SCREENSHOT") == "1"  # read before conftest cleans the environment

needs_browser = pytest.mark.skipif(
    not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver (scripts/test.sh installs them)"
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1700",
        "--no-proxy-server",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    driver.set_page_load_timeout(10)
    driver.set_script_timeout(10)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def monitor() -> Iterator[str]:
    server = MonitorServer(create_app(token=TOKEN), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def open_page(driver: Any, url: str) -> str:
    """Load ``url`` in a clean tab state and wait for the first refresh; its outcome or "error"."""
    driver.get("about:blank")
    driver.delete_all_cookies()
    driver.get(url.split("#")[0] + "healthz")  # same origin: clear the tab's stored token
    driver.execute_script("sessionStorage.clear()")
    driver.get(url)
    return wait_updated(driver)


def wait_updated(driver: Any) -> str:
    """The page's next refresh: the time it shows, or "error"."""
    from selenium.webdriver.support.ui import WebDriverWait

    def updated(d: Any) -> str:
        return str(d.find_element("tag name", "body").get_attribute("data-updated") or "")

    result: str = WebDriverWait(driver, 10).until(updated)
    return result


def shown(driver: Any, key: str, scope: str) -> dict[str, str]:
    cells = driver.find_elements("css selector", f'section[data-key="{key}"] td[data-scope="{scope}"]')
    return {cell.get_attribute("data-figure"): cell.text for cell in cells}


def close_to(text: str, expected: float | None, scale: float, decimals: int) -> bool:
    """The page's rounding of ``expected`` (JavaScript's toFixed may round a tie the other way)."""
    if expected is None:
        return text == "–"
    number = float(re.sub(r"[^0-9.\-]", "", text))
    return abs(number - expected * scale) <= 0.5 * 10**-decimals + 1e-9


def check_figures(page: dict[str, str], block: dict[str, Any]) -> None:
    assert page["calls"] == str(block["calls"])
    assert page["errors_1302"] == str(block["errors_1302"])
    assert page["fallbacks"] == str(block["fallbacks"])
    assert page["failures"] == str(block["failures"])
    assert close_to(page["success_rate"], block["success_rate"], 100, 2), (page, block)
    assert close_to(page["cache_hit_rate"], block["cache"]["hit_rate"], 100, 2), (page, block)
    assert close_to(page["wait_p50"], block["waits"]["p50"], 1, 3), (page, block)
    assert close_to(page["wait_p99"], block["waits"]["p99"], 1, 3), (page, block)
    learned, limit = block["learned_limit"], block["concurrency_limit"]
    assert page["limit"] == (f"fixed {limit}" if learned is None else f"learned {learned}")


@needs_browser
def test_the_page_shows_what_stats_returns(
    browser: Any, monitor: str, traffic_backend: LocalBackend, tmp_path: Path
) -> None:
    real_traffic(traffic_backend)
    assert open_page(browser, f"{monitor}/#token={TOKEN}&window=15") != "error"
    assert "#" not in browser.current_url and TOKEN not in browser.current_url  # the fragment is dropped
    with httpx.Client(base_url=monitor, timeout=5, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        stats = http.get("/api/v1/monitoring/stats").json()
        window = http.get("/api/v1/monitoring/rate-limit-stats?window_minutes=15").json()
    glm, auto = stats["keys"]["glm-4"], stats["keys"]["glm-auto"]
    # The traffic did what it is for: every figure on the page has something to show.
    assert glm["fallbacks"] == 1 and glm["errors_1302"] == 3 and glm["cache"]["hits"] >= 1
    assert auto["learned_limit"] is not None and auto["limit_cuts"] >= 1 and auto["waits"]["count"] >= 1
    for key in ("glm-4", "glm-auto"):
        check_figures(shown(browser, key, "total"), stats["keys"][key])
        check_figures(shown(browser, key, "window"), window["keys"][key])
        per_hour = shown(browser, key, "window")["errors_1302_per_hour"]
        assert close_to(per_hour, window["keys"][key]["errors_1302_per_hour"], 1, 1)
    charts = browser.find_elements("css selector", 'section[data-key="glm-auto"] figure[data-chart]')
    assert [c.get_attribute("data-chart") for c in charts] == [
        "calls",
        "errors_1302",
        "success_rate",
        "wait",
        "in_flight",
        "cache",
        "fallbacks",
    ]
    in_flight = browser.find_element("css selector", 'section[data-key="glm-auto"] figure[data-chart="in_flight"]')
    assert f"learned limit {auto['learned_limit']}" in in_flight.text
    assert glm["concurrency_limit"] == 2  # the decorator's own concurrency=2, drawn too
    fixed = browser.find_element("css selector", 'section[data-key="glm-4"] figure[data-chart="in_flight"]')
    assert "limit 2" in fixed.text
    alerts = [a.get_attribute("data-alert") for a in browser.find_elements("css selector", "#alerts li")]
    assert sorted(alerts) == sorted(a["alert"] for a in window["alerts"]) and "errors_1302" in alerts
    source = browser.page_source
    assert PROMPT not in source and API_KEY not in source and TOKEN not in source.replace('value="', "")
    shot = tmp_path / "monitoring.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    if UPDATE_SCREENSHOT:
        shutil.copyfile(shot, ROOT / "docs" / "monitoring.png")


@needs_browser
@pytest.mark.parametrize("fragment", ["", "#token=wrong-token"], ids=["missing", "wrong"])
def test_without_the_right_token_the_page_shows_no_data(
    browser: Any, monitor: str, traffic_backend: LocalBackend, fragment: str
) -> None:
    real_traffic(traffic_backend)
    assert open_page(browser, f"{monitor}/{fragment}") == "error"
    status = browser.find_element("id", "status")
    assert "bearer token is required" in status.text and status.get_attribute("class") == "error"
    assert browser.find_elements("css selector", "section[data-key]") == []
    assert "glm-4" not in browser.find_element("tag name", "main").text


@needs_browser
def test_a_token_typed_into_the_page_is_sent_as_a_header(
    browser: Any, monitor: str, traffic_backend: LocalBackend
) -> None:
    real_traffic(traffic_backend)
    assert open_page(browser, f"{monitor}/") == "error"
    browser.execute_script("document.body.dataset.updated = ''")
    browser.find_element("id", "token").send_keys(TOKEN)
    browser.find_element("css selector", "#controls button").click()
    assert wait_updated(browser) != "error"
    assert shown(browser, "glm-4", "total")["calls"] != ""


def axis_span(driver: Any, key: str) -> int | None:
    """Minutes from the first to the last minute on the x axis of ``key``'s calls chart; ``None``
    until it is drawn (the figures can arrive before the series on a busy host)."""
    texts = driver.find_elements("css selector", f'section[data-key="{key}"] figure[data-chart="calls"] svg text')
    if len(texts) < 4:
        return None
    first, last = (int(t.text[:2]) * 60 + int(t.text[3:]) for t in texts[2:4])
    return (last - first) % (24 * 60)


@needs_browser
def test_the_page_follows_the_chosen_window_and_refreshes_itself(
    browser: Any, monitor: str, traffic_backend: LocalBackend
) -> None:
    """Choosing a window in the page re-reads and re-charts it; later calls appear with no action taken."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import Select, WebDriverWait

    def eventually(holds: Callable[[Any], bool], seconds: float = 10) -> None:
        """Wait for ``holds``: the page redraws itself every 5 s, which can replace an element
        between finding it and reading it."""
        WebDriverWait(browser, seconds, ignored_exceptions=(StaleElementReferenceException,)).until(holds)

    real_traffic(traffic_backend)
    assert open_page(browser, f"{monitor}/#token={TOKEN}&window=15") != "error"
    eventually(lambda d: axis_span(d, "glm-4") == 14)
    Select(browser.find_element("id", "window")).select_by_value("180")
    eventually(lambda d: "last 3 hours" in d.find_element("css selector", "table.figures").text)
    eventually(lambda d: axis_span(d, "glm-4") == 179)
    requested = browser.execute_script("return performance.getEntriesByType('resource').map((e) => e.name)")
    assert any(name.endswith("/series?window_minutes=180") for name in requested)
    assert any(name.endswith("/rate-limit-stats?window_minutes=180") for name in requested)

    more_calls(traffic_backend, 3)
    with httpx.Client(base_url=monitor, timeout=5, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        calls = http.get("/api/v1/monitoring/stats").json()["keys"]["glm-4"]["calls"]
    # Nothing is clicked from here: the page's own timer (every 5 s) must bring the new calls in.
    eventually(lambda d: shown(d, "glm-4", "total").get("calls") == str(calls), 12)
    eventually(lambda d: shown(d, "glm-4", "window").get("calls") == str(calls))


def test_the_page_loads_nothing_from_elsewhere() -> None:
    """No CDN: every file the page uses ships in the package, and the CSP allows only its own origin."""
    for path in STATIC.iterdir():
        text = path.read_text(encoding="utf-8")
        assert re.findall(r"https?://(?!www\.w3\.org/2000/svg)", text) == [], path.name
    page = create_app(token=TOKEN).handle("GET", "/")
    assert page.status == 200 and page.content_type.startswith("text/html")
    assert b'data-api="api/v1/monitoring"' in page.body
    assert (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; "
        "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'",
    ) in page.headers


def test_the_series_endpoint_charts_each_minute(traffic_backend: LocalBackend) -> None:
    """Per-minute columns, oldest first, with the rolling hour of 1302s; bounded windows; the token."""
    real_traffic(traffic_backend)
    app = create_app(token=TOKEN)
    bearer = f"Bearer {TOKEN}"
    assert app.handle("GET", "/api/v1/monitoring/series").status == 401
    for bad in ("0", "361", "abc", "5&window_minutes=6"):
        assert app.handle("GET", "/api/v1/monitoring/series", f"window_minutes={bad}", bearer).status == 400
    answer = app.handle("GET", "/api/v1/monitoring/series", "window_minutes=5", bearer)
    data = json.loads(answer.body)
    glm = data["keys"]["glm-4"]["minutes"]
    assert data["window_minutes"] == 5 and all(len(column) == 5 for column in glm.values())
    stats = json.loads(app.handle("GET", "/api/v1/monitoring/stats", "", bearer).body)["keys"]
    assert sum(glm["calls"]) == stats["glm-4"]["calls"] and sum(glm["fallbacks"]) == 1
    assert glm["errors_1302_last_hour"][-1] == stats["glm-4"]["errors_1302"] == sum(glm["errors_1302"])
    assert glm["in_flight"][-1] > 0 and data["keys"]["glm-4"]["limit"] == {"value": 2, "kind": "fixed"}
    assert data["keys"]["glm-auto"]["limit"] == {
        "value": stats["glm-auto"]["learned_limit"],
        "kind": "learned",
        "cuts": stats["glm-auto"]["limit_cuts"],
    }
    assert data["thresholds"] == {"errors_1302_per_hour": 1, "min_success_rate": 0.995}
    assert PROMPT not in answer.body.decode() and API_KEY not in answer.body.decode()


async def test_the_asgi_app_serves_the_page_where_it_is_mounted() -> None:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    app = create_app(prefix="", token=TOKEN)
    for path in ("/mon/", "/mon/monitor.js"):
        sent.clear()
        scope = {"type": "http", "method": "GET", "path": path, "root_path": "/mon", "headers": []}
        await app(scope, receive, send)
        assert sent[0]["status"] == 200, path
    assert b"refresh" in sent[1]["body"]


def test_the_monitor_command_serves_the_page_and_the_fleets_minutes_redis(redis_url: str) -> None:
    """``glm-guard monitor`` over Redis: the page at /, and /series puts each minute where it was."""
    backend = RedisBackend(redis_url)
    now = int(RECORDER.clock() // 60)
    try:
        backend.shared_stats().add(
            {
                now - 70: {"glm-4": {"calls": 5, "successes": 5}},  # before the window, not in the rolling hour
                now - 30: {"glm-4": {"calls": 4, "successes": 3, "fallbacks": 1, "err.rate_limit.1302": 2}},
                now - 5: {"glm-4": {"calls": 6, "successes": 6, "cache_hits": 3, "cache_misses": 3}},
            }
        )
    finally:
        backend.close()
    process = subprocess.Popen(
        [sys.executable, "-m", "glm_guard", "monitor", "--host", "127.0.0.1", "--port", "0"],
        cwd=ROOT,
        env={**os.environ, "REDIS_URL": redis_url, "GLM_GUARD_MONITOR_TOKEN": TOKEN},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        base = process.stdout.readline().split()[3].rstrip(",")
        banner = [process.stdout.readline() for _ in range(7)]
        assert any(f"{base}/#token=<token>" in line for line in banner) and TOKEN not in "".join(banner)
        with httpx.Client(base_url=base, timeout=5) as http:
            page = http.get("/")
            assert page.status_code == 200 and "glm_guard monitor" in page.text
            assert http.get("/api/v1/monitoring/series").status_code == 401
            bearer = {"Authorization": f"Bearer {TOKEN}"}
            data = http.get("/api/v1/monitoring/series?window_minutes=60", headers=bearer).json()
    finally:
        process.terminate()
        process.communicate(timeout=10)
    start = data["first_minute"] // 60
    assert data["source"] == "redis" and start in (now - 59, now - 58)  # the minute may turn meanwhile
    at_30, at_5 = now - 30 - start, now - 5 - start
    glm = data["keys"]["glm-4"]["minutes"]
    assert sum(glm["calls"]) == 10 and glm["calls"][at_30] == 4 and glm["calls"][at_5] == 6
    assert glm["fallbacks"][at_30] == 1 and glm["success_rate"][at_30] == 0.75 and glm["success_rate"][0] is None
    assert set(glm["errors_1302_last_hour"][:at_30]) == {0} and set(glm["errors_1302_last_hour"][at_30:]) == {2}
    assert glm["cache_hits"][at_5] == 3
