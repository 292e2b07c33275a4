"""The dashboard in real headless Chromium (Debian's, driven by Playwright): sign-in, roles, the slider, feedback.

The server is the one `make dashboard` starts (`python -m radplan_dashboard serve`) on a free loopback port.
Screenshots are kept under the test's tmp folder (pytest keeps the last three runs' folders).
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from radplan.monitoring import parse_feedback_csv
from support.orthanc import free_port

from .conftest import PASSWORD, USERS

pytestmark = pytest.mark.browser
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def server(small_lake, tmp_path):
    port = free_port()
    env = {**os.environ, "RADPLAN_DEMO": "1", "PYTHONPATH": str(REPO_ROOT)}
    env.pop("RADPLAN_DEID_KEY", None)
    log = (tmp_path / "server.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "radplan_dashboard", "serve", "--home", str(small_lake["home"]), "--port", str(port)],
                               cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, (tmp_path / "server.log").read_text()
        try:
            if requests.get(f"{url}/login", timeout=2).ok:
                break
        except requests.ConnectionError:
            pass
        assert time.monotonic() < deadline, "dashboard did not start"
        time.sleep(0.3)
    yield url
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture()
def browser():
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium not installed (make system-deps)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        yield instance
        instance.close()


def sign_in(page, url: str, role: str) -> None:
    page.goto(f"{url}/login")
    page.fill("#username", USERS[role])
    page.fill("#password", PASSWORD)
    page.click("#sign-in")
    page.wait_for_load_state()


def test_clinician_reviews_a_patient_and_gives_feedback_and_is_refused_the_engineer_page(server, browser, small_lake, tmp_path):
    shots = tmp_path / "screenshots"
    shots.mkdir()
    page = browser.new_page(viewport={"width": 1280, "height": 1600})
    sign_in(page, server, "clinician")
    assert page.url.endswith("/cohort")
    assert page.inner_text("#signed-in-as") == f"{USERS['clinician']} (clinician)"
    assert page.locator("#cohort tbody tr").count() == 3
    page.select_option("select[name=has_alert]", "yes")
    page.click("#filters button")
    page.wait_for_load_state()
    assert page.locator("#cohort tbody tr").count() == 1
    page.screenshot(path=str(shots / "cohort.png"), full_page=True)

    key = small_lake["keys"]["lung"]
    page.click(f"a[href='/patients/{key}']")
    page.wait_for_load_state("networkidle")
    assert page.locator("#alerts").count() == 1
    assert page.evaluate("document.getElementById('slice-image').naturalWidth") > 0
    before = page.get_attribute("#slice-image", "src")
    page.locator("#slice-slider").evaluate("(e) => { e.value = 0; e.dispatchEvent(new Event('input')); }")
    # Polled from Python: the page's CSP forbids the eval that wait_for_function would use.
    deadline = time.monotonic() + 30
    while not page.evaluate("document.getElementById('slice-image').complete && document.getElementById('slice-image').naturalWidth > 0"):
        assert time.monotonic() < deadline, "slice 0 did not load"
        time.sleep(0.1)
    assert page.get_attribute("#slice-image", "src") != before and page.get_attribute("#slice-image", "src").endswith("/0.png")
    assert page.inner_text("#slice-label").startswith("slice 1 of ")
    assert page.evaluate("document.getElementById('explanation').naturalWidth") > 0
    page.screenshot(path=str(shots / "patient.png"), full_page=True)

    form = page.locator("form.feedback").first
    recommendation_id = form.locator("input[name=recommendation_id]").get_attribute("value")
    form.locator("input[value=reject]").check()
    form.locator("select[name=reason]").select_option("patient_preference")
    form.locator("input[name=comment]").fill("prefers oral therapy")
    form.locator("button").click()
    page.wait_for_load_state()
    assert f"Your decision on {recommendation_id} was saved" in page.inner_text("#saved")
    [written] = list((small_lake["home"] / "landing" / "feedback").glob("*.csv"))
    parsed = parse_feedback_csv(written.read_bytes(), now=dt.datetime.now(dt.timezone.utc)).rows
    assert parsed[["recommendation_id", "decision", "reason", "clinician"]].values.tolist() == [
        [recommendation_id, "override", "patient_preference", USERS["clinician"]]]

    # Script in a comment is refused and nothing more is stored.
    page.go_back()
    page.wait_for_load_state()
    form = page.locator("form.feedback").first
    form.locator("input[value=accept]").check()
    form.locator("input[name=comment]").fill("<script>document.title='owned'</script>")
    form.locator("button").click()
    page.wait_for_load_state()
    assert "markup or script" in page.inner_text("#problems")
    assert page.title() != "owned"
    assert len(list((small_lake["home"] / "landing" / "feedback").glob("*.csv"))) == 1
    page.screenshot(path=str(shots / "feedback-refused.png"), full_page=True)

    response = page.goto(f"{server}/health")
    assert response.status == 403
    assert "you are signed in as clinician" in page.inner_text("#error-message")
    page.screenshot(path=str(shots / "clinician-refused-health.png"))


def test_data_engineer_sees_pipeline_health_and_is_refused_patient_pages(server, browser, small_lake, tmp_path):
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    sign_in(page, server, "data_engineer")
    assert page.url.endswith("/health")
    assert page.locator("#freshness tr").count() == 7
    assert page.evaluate("document.getElementById('drift-plot').naturalWidth") > 0
    page.screenshot(path=str(tmp_path / "health.png"), full_page=True)
    for path in (f"/patients/{small_lake['keys']['lung']}", "/cohort"):
        response = page.goto(server + path)
        assert response.status == 403
        assert "this page is for the clinician role; you are signed in as data engineer" in page.inner_text("#error-message")
    page.screenshot(path=str(tmp_path / "engineer-refused-patient.png"))
    assert (tmp_path / "health.png").stat().st_size > 10_000
