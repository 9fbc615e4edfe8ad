"""Browser tests of the account portal: headless Chromium (Debian's `chromium` and `chromium-driver`, which
`make test` installs) driven by Selenium against the local stack, with a screenshot after every step and test in
artifacts/screenshots/.

Fixtures: `stack` (the local stack, one per module), `account` (a fresh account on it, with its credentials),
`driver` (one headless Chromium for the session, cookies cleared before each test) and `portal`, the helper a test
uses: `portal.open(path)`, `portal.sign_in(account)`, `portal.shot(step)`, `portal.text()`, `portal.submit(...)`."""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOTS = REPO / "artifacts" / "screenshots"
# How long a page, a form's answer or a dialog may take on a loaded machine (each wait ends as soon as it is there).
WAIT_SECONDS = 30
SHORTCODES = itertools.count(10_000)

pytestmark = pytest.mark.browser


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Without the Debian packages (`make test` installs them) the browser tests are skipped, never downloaded.
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        return
    skip = pytest.mark.skip(reason="needs /usr/bin/chromium and /usr/bin/chromedriver: run `make browser-deps`")
    for item in items:
        if "tests/browser/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    # Kept on the item so the `portal` fixture's teardown can name the final screenshot after the outcome.
    setattr(item, f"report_{report.when}", report)


@pytest.fixture(scope="module")
def stack() -> Iterator[Any]:
    from sms_gateway_tools.localstack import LocalStack

    with LocalStack(port=0, dlr_delay=0.2) as running:
        yield running


@pytest.fixture
def on_stack(stack: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The stack's AWS environment for this test's own calls (the admin commands, reading the table): the suite's
    autouse isolation removes AWS_ENDPOINT_URL before each test, and the stack outlives a test."""
    from sms_gateway import bootstrap

    for name, value in stack.env.items():
        monkeypatch.setenv(name, value)
    bootstrap.reset()
    yield stack
    bootstrap.reset()


@pytest.fixture
def account(on_stack: Any) -> dict[str, Any]:
    """A fresh account for each test: username, password, token, webhook token and signing secret."""
    from sms_gateway_tools.admin import create_account

    # A shortcode of its own: a sender belongs to one account, and every test makes a new one. Counted, not drawn at
    # random: two of one module's (one stack's) random shortcodes could be the same (18 pairs in 90,000: a run in
    # 5,000), and the second account was refused its sender.
    shortcode = str(next(SHORTCODES))
    return create_account(name="Cinema Club", senders=[shortcode], credits=100, api_url=on_stack.api_url)


@pytest.fixture(scope="session")
def driver() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    # Both paths are given, so Selenium Manager has nothing to look up; offline makes sure it never downloads.
    os.environ["SE_OFFLINE"] = "true"
    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # we run as root in a container
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1100",
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(argument)
    # This run's screenshots only (artifacts/ is not in git).
    for stale in SCREENSHOTS.glob("*.png"):
        stale.unlink()
    browser = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    browser.implicitly_wait(0)
    try:
        yield browser
    finally:
        browser.quit()


def clear_cookies(driver: Any) -> None:
    """Every cookie of every path (WebDriver's own call sees only the current page's), so each test starts signed
    out."""
    driver.execute_cdp_cmd("Network.clearBrowserCookies", {})


class Portal:
    """What a browser test does with the portal: open pages, fill and send forms, read the page, take screenshots."""

    def __init__(self, driver: Any, base_url: str, test_name: str) -> None:
        self.driver = driver
        self.base_url = base_url.rstrip("/")
        self.test_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", test_name)
        self.steps = 0

    def open(self, path: str) -> None:
        self.driver.get(f"{self.base_url}{path}")
        self.wait_for_page()

    def wait_for_page(self) -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(self.driver, WAIT_SECONDS).until(
            lambda d: d.execute_script("return document.readyState") == "complete"
        )

    def shot(self, step: str) -> Path:
        """Saves a screenshot of the page as it is now: artifacts/screenshots/<test>-<n>-<step>.png."""
        self.steps += 1
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{self.test_name}-{self.steps:02d}-{re.sub(r'[^A-Za-z0-9_-]+', '_', step)}.png"
        # The whole page, not only the window: the window grows to the page's height for the shot.
        size = self.driver.get_window_size()
        height = self.driver.execute_script("return document.documentElement.scrollHeight")
        self.driver.set_window_size(size["width"], max(int(height) + 120, size["height"]))
        try:
            self.driver.save_screenshot(str(path))
        finally:
            self.driver.set_window_size(size["width"], size["height"])
        return path

    def find(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return list(self.driver.find_elements(By.CSS_SELECTOR, css))

    def fill(self, css: str, value: str) -> None:
        field = self.find(css)
        field.clear()
        field.send_keys(value)

    def choose(self, css: str, value: str) -> None:
        from selenium.webdriver.support.ui import Select

        Select(self.find(css)).select_by_value(value)

    def submit(self, form_css: str, *, confirm: bool = False) -> None:
        """Clicks the form's button (and accepts its confirmation dialog) and waits for the next page."""
        from selenium.webdriver.support import expected_conditions
        from selenium.webdriver.support.ui import WebDriverWait

        old_page = self.find("html")
        self.find(f"{form_css} button[type=submit]").click()
        if confirm:
            WebDriverWait(self.driver, WAIT_SECONDS).until(expected_conditions.alert_is_present()).accept()
        WebDriverWait(self.driver, WAIT_SECONDS).until(lambda _: replaced(old_page))
        self.wait_for_page()

    def form(self, action: str) -> str:
        """The CSS selector of the page's form that runs `action`."""
        return f"form:has(input[name=action][value='{action}'])"

    def text(self) -> str:
        return str(self.find("body").text)

    def sign_in(self, account: dict[str, Any], password: str | None = None) -> None:
        self.open("/portal/login")
        self.fill("#username", account["username"])
        self.fill("#password", password if password is not None else account["password"])
        self.submit("form.sign-in")


@pytest.fixture
def portal(request: pytest.FixtureRequest, driver: Any, stack: Any) -> Iterator[Portal]:
    clear_cookies(driver)
    helper = Portal(driver, stack.api_url, request.node.name)
    yield helper
    report = getattr(request.node, "report_call", None)
    outcome = "passed" if report is not None and report.passed else "failed"
    try:
        helper.shot(f"end-{outcome}")
    finally:
        clear_cookies(driver)


def replaced(element: Any) -> bool:
    """Whether the page that held `element` is gone. Mid-navigation Chromium may answer that the node "does not
    belong to the document" instead of calling it stale: both mean the old page was replaced."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    try:
        element.is_enabled()
    except StaleElementReferenceException:
        return True
    except WebDriverException as error:
        if "does not belong to the document" in str(error):
            return True
        raise
    return False
