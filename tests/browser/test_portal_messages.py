"""The Messages and Compose pages in headless Chromium against the local stack: sign in, watch the live preview,
refuse a CSV with a bad row, send, see the message reach delivered (the simulator's DLR), see the chart, and search
by number and reference. Each step saves a screenshot."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

NUMBER = "2348030000001"
LONG_TEXT = "Your cinema tickets for Friday are confirmed. " * 4
# How long the stack gets to dispatch a message and the simulator to report it delivered (dlr_delay 0.2 s).
DELIVERY_TIMEOUT = 45.0


# ------------------------------------------------------------------ fixtures (until the shared browser conftest lands)

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def portal_stack() -> Iterator[Any]:
    from sms_gateway_tools.localstack import LocalStack

    with LocalStack(port=0, dlr_delay=0.2) as running:
        yield running


@pytest.fixture(scope="module")
def portal_account(portal_stack: Any) -> dict[str, Any]:
    from sms_gateway_tools.admin import create_account

    return create_account(name="Browser Club", senders=["48974"], credits=50, api_url=portal_stack.api_url)


@pytest.fixture
def browser() -> Iterator[Any]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("needs the Debian packages chromium and chromium-driver (make install-browser)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1400"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def screenshot(browser: Any, request: pytest.FixtureRequest) -> Callable[[str], Path]:
    folder = ARTIFACTS / request.node.name
    folder.mkdir(parents=True, exist_ok=True)

    def save(name: str) -> Path:
        path = folder / f"{name}.png"
        browser.save_screenshot(str(path))
        return path

    return save


# ------------------------------------------------------------------ helpers


def wait_until(condition: Callable[[], Any], *, timeout: float = 10.0, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


def text_of(driver: Any, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.ID, element_id).text)


def sign_in(driver: Any, base_url: str, account: dict[str, Any]) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{base_url}/portal/login")
    driver.find_element(By.ID, "username").send_keys(account["username"])
    driver.find_element(By.ID, "password").send_keys(account["password"])
    driver.find_element(By.CSS_SELECTOR, "form.sign-in button[type=submit]").click()
    wait_until(lambda: "/portal/messages" in driver.current_url, what="the Messages page after signing in")


def test_compose_send_see_delivered_chart_and_search(
    portal_stack: Any, portal_account: dict[str, Any], browser: Any, screenshot: Callable[[str], Path], tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    base_url = portal_stack.api_url
    # Given a signed-in user on the Compose page
    sign_in(browser, base_url, portal_account)
    screenshot("01-signed-in")
    browser.get(f"{base_url}/portal/compose")
    text = browser.find_element(By.ID, "text")
    numbers = browser.find_element(By.ID, "numbers")

    # When they type a short text and a number, the preview shows one part costing one credit
    text.send_keys("Hello from the portal")
    numbers.send_keys(NUMBER)
    wait_until(lambda: text_of(browser, "preview-recipients") == "1", what="the preview to count one recipient")
    assert text_of(browser, "preview-parts") == "1"
    assert text_of(browser, "preview-encoding") == "GSM-7"
    assert text_of(browser, "preview-cost") == "1"
    assert text_of(browser, "preview-balance") == str(portal_account["credits"])
    screenshot("02-preview-one-part")

    # And as the text grows past 160 characters the preview updates to two parts, two credits
    text.send_keys(" " + LONG_TEXT)
    wait_until(lambda: text_of(browser, "preview-parts") == "2", what="the preview to show two parts")
    assert text_of(browser, "preview-cost") == "2"
    screenshot("03-preview-two-parts")

    # And a CSV with a bad row is listed row by row, and sending it sends nothing
    bad_csv = tmp_path / "recipients.csv"
    bad_csv.write_text(f"phone\n{NUMBER}\nnot a number\n")
    browser.find_element(By.ID, "csv-file").send_keys(str(bad_csv))
    wait_until(
        lambda: "row 3 'not a number'" in text_of(browser, "preview-problems"), what="the CSV's bad row in the preview"
    )
    screenshot("04-preview-bad-csv-row")
    browser.find_element(By.CSS_SELECTOR, "form.compose button[type=submit]").click()
    error = wait_until(lambda: browser.find_elements(By.CSS_SELECTOR, "[role=alert]"), what="the refusal")
    assert "row 3 'not a number'" in error[0].text and "nothing was sent" in error[0].text
    screenshot("05-bad-csv-refused")

    # When they send the text to the number on a fresh form
    browser.get(f"{base_url}/portal/compose")
    browser.find_element(By.ID, "text").send_keys("Hello from the portal")
    browser.find_element(By.ID, "numbers").send_keys(NUMBER)
    wait_until(lambda: browser.find_element(By.ID, "preview-status").get_attribute("data-ready") == "yes", what="ready")
    browser.find_element(By.CSS_SELECTOR, "form.compose button[type=submit]").click()
    wait_until(lambda: "batch=" in browser.current_url, what="the batch page after sending")
    reference = browser.current_url.split("batch=")[1].split("&")[0]
    assert "Sent" in browser.find_element(By.CSS_SELECTOR, "[role=status]").text
    screenshot("06-sent")

    # Then the batch page shows the message reach delivered (the simulator's DLR), polled with a bound
    def delivered() -> bool:
        browser.refresh()
        return bool(browser.find_elements(By.CSS_SELECTOR, 'span.status[data-status="delivered"]'))

    wait_until(delivered, timeout=DELIVERY_TIMEOUT, what="the message to read delivered")
    screenshot("07-delivered")

    # And the Messages page draws the delivery rate: today's bar at 100%, with the figure in its table
    browser.get(f"{base_url}/portal/messages")
    chart = browser.find_element(By.CSS_SELECTOR, "svg#chart-days")
    bars = chart.find_elements(By.CSS_SELECTOR, 'g.bar[data-rate="100%"]')
    assert len(bars) == 1
    assert "1 of 1 delivered" in chart.find_element(By.TAG_NAME, "desc").get_attribute("textContent")
    network = browser.find_element(By.CSS_SELECTOR, 'svg#chart-networks g.bar[data-label="mtn"]')
    assert network.get_attribute("data-rate") == "100%"
    assert reference in browser.find_element(By.ID, "batches").text
    browser.execute_script("document.getElementById('delivery').scrollIntoView()")
    screenshot("08-chart")

    # And a search by number (national form) and by reference finds the batch
    for field, value in (("search-number", "08030000001"), ("search-reference", reference)):
        browser.get(f"{base_url}/portal/messages")
        browser.find_element(By.ID, field).send_keys(value)
        browser.find_element(By.CSS_SELECTOR, "form.search button[type=submit]").click()
        results = wait_until(lambda: browser.find_elements(By.ID, "results"), what="search results")
        assert reference in results[0].text
        screenshot(f"09-search-{field.removeprefix('search-')}")
