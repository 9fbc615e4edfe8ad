"""The Messages and Compose pages in headless Chromium against the local stack: sign in, watch the live preview,
refuse a CSV with a bad row, send, see the message reach delivered (the simulator's DLR), see the chart, and search
by number and reference. Each step saves a screenshot."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import Portal

pytestmark = pytest.mark.browser

NUMBER = "2348030000001"
LONG_TEXT = "Your cinema tickets for Friday are confirmed. " * 4
# How long the stack gets to dispatch a message and the simulator to report it delivered (dlr_delay 0.2 s).
DELIVERY_TIMEOUT = 45.0


def wait_until(condition: Callable[[], Any], *, timeout: float = 30.0, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


def text_of(portal: Portal, element_id: str) -> str:
    return str(portal.find(f"#{element_id}").text)


def test_compose_send_see_delivered_chart_and_search(portal: Portal, account: dict[str, Any], tmp_path: Path) -> None:
    sender = account["senders"][0]
    # Given a signed-in user: signing in leads to the Messages page, then Compose
    portal.sign_in(account)
    assert portal.driver.current_url.endswith("/portal/messages")
    portal.shot("signed-in")
    portal.open("/portal/compose")
    portal.choose("#sender", sender)

    # When they type a short text and a number, the preview shows one part costing one credit
    portal.find("#text").send_keys("Hello from the portal")
    portal.find("#numbers").send_keys(NUMBER)
    wait_until(lambda: text_of(portal, "preview-recipients") == "1", what="the preview to count one recipient")
    assert text_of(portal, "preview-parts") == "1"
    assert text_of(portal, "preview-encoding") == "GSM-7"
    assert text_of(portal, "preview-cost") == "1"
    assert text_of(portal, "preview-balance") == str(account["credits"])
    portal.shot("preview-one-part")

    # And as the text grows past 160 characters the preview updates to two parts, two credits
    portal.find("#text").send_keys(" " + LONG_TEXT)
    wait_until(lambda: text_of(portal, "preview-parts") == "2", what="the preview to show two parts")
    assert text_of(portal, "preview-cost") == "2"
    portal.shot("preview-two-parts")

    # And a CSV with a bad row is listed row by row, and sending it sends nothing
    bad_csv = tmp_path / "recipients.csv"
    bad_csv.write_text(f"phone\n{NUMBER}\nnot a number\n")
    portal.find("#csv-file").send_keys(str(bad_csv))
    wait_until(
        lambda: "row 3 'not a number'" in text_of(portal, "preview-problems"), what="the CSV's bad row in the preview"
    )
    portal.shot("preview-bad-csv-row")
    portal.submit("form.compose")
    error = portal.find("[role=alert]").text
    assert "row 3 'not a number'" in error and "nothing was sent" in error
    portal.shot("bad-csv-refused")

    # When they send the text to the number on a fresh form
    portal.open("/portal/compose")
    portal.choose("#sender", sender)
    portal.find("#text").send_keys("Hello from the portal")
    portal.find("#numbers").send_keys(NUMBER)
    wait_until(lambda: portal.find("#preview-status").get_attribute("data-ready") == "yes", what="ready to send")
    portal.submit("form.compose")
    assert "batch=" in portal.driver.current_url
    reference = portal.driver.current_url.split("batch=")[1].split("&")[0]
    assert "Sent" in portal.find("[role=status]").text
    portal.shot("sent")

    # Then the batch page shows the message reach delivered (the simulator's DLR), polled with a bound
    def delivered() -> bool:
        portal.driver.refresh()
        portal.wait_for_page()
        return bool(portal.find_all('span.status[data-status="delivered"]'))

    wait_until(delivered, timeout=DELIVERY_TIMEOUT, what="the message to read delivered")
    portal.shot("delivered")

    # And the Messages page draws the delivery rate: today's bar at 100%, with the figure in its table
    portal.open("/portal/messages")
    chart = portal.find("svg#chart-days")
    assert len(chart.find_elements("css selector", 'g.bar[data-rate="100%"]')) == 1
    assert "1 of 1 delivered" in chart.find_element("css selector", "desc").get_attribute("textContent")
    assert portal.find('svg#chart-networks g.bar[data-label="mtn"]').get_attribute("data-rate") == "100%"
    assert reference in portal.find("#batches").text
    portal.driver.execute_script("document.getElementById('delivery').scrollIntoView()")
    portal.shot("chart")

    # And a search by number (national form) and by reference finds the batch
    for field, value in (("#search-number", "08030000001"), ("#search-reference", reference)):
        portal.open("/portal/messages")
        portal.fill(field, value)
        portal.submit("form.search")
        assert reference in portal.find("#results").text
        portal.shot(f"search-{field.removeprefix('#search-')}")


def test_a_line_break_in_the_text_is_sent_and_charged_as_the_preview_quotes_it(portal: Portal, account: dict[str, Any]):
    # Given a signed-in user typing 160 GSM characters, one of them a line break: the preview quotes one part
    portal.sign_in(account)
    portal.open("/portal/compose")
    portal.choose("#sender", account["senders"][0])
    portal.find("#text").send_keys("a" * 100 + "\n" + "b" * 59)
    portal.find("#numbers").send_keys(NUMBER)
    wait_until(lambda: portal.find("#preview-status").get_attribute("data-ready") == "yes", what="ready to send")
    assert (text_of(portal, "preview-parts"), text_of(portal, "preview-cost")) == ("1", "1")
    # When they press Send
    portal.submit("form.compose")
    assert "batch=" in portal.driver.current_url
    portal.shot("sent-with-a-line-break")
    # Then the batch is the one the preview quoted: one part, one credit
    facts = portal.find("dl.facts").text
    assert "1 (GSM-7)" in facts and "1 credits" in facts, facts


def test_a_csv_still_attached_after_a_refused_send_is_shown_and_can_be_removed(
    portal: Portal, account: dict[str, Any], tmp_path: Path
) -> None:
    from sms_gateway.bootstrap import gateway

    # Given a send refused because the CSV the user chose has a row that is not a number
    portal.sign_in(account)
    portal.open("/portal/compose")
    portal.choose("#sender", account["senders"][0])
    portal.find("#text").send_keys("Doors open at 7")
    csv_file = tmp_path / "members.csv"
    csv_file.write_text("phone\n2348030000002\nnot a number\n")
    portal.find("#csv-file").send_keys(str(csv_file))
    wait_until(lambda: "not a number" in text_of(portal, "preview-problems"), what="the CSV's bad row in the preview")
    portal.submit("form.compose")
    assert "nothing was sent" in portal.find("[role=alert]").text
    portal.shot("csv-refused")

    # Then the page it comes back to says the CSV is still attached, by name, and offers to remove it
    attached = portal.find("#csv-attached")
    assert attached.is_displayed() and "members.csv" in attached.text, portal.text()
    portal.shot("csv-still-attached")

    # When the user removes it and types one number instead
    portal.find("#csv-remove").click()
    wait_until(lambda: not portal.find("#csv-attached").is_displayed(), what="the CSV to be shown removed")
    portal.find("#numbers").send_keys(NUMBER)
    wait_until(lambda: portal.find("#preview-status").get_attribute("data-ready") == "yes", what="ready to send")
    assert text_of(portal, "preview-recipients") == "1"
    portal.submit("form.compose")

    # Then the message goes to that number alone
    assert "batch=" in portal.driver.current_url, portal.text()
    reference = int(portal.driver.current_url.split("batch=")[1].split("&")[0])
    batch = gateway().store.get_batch(account["account_id"], reference)
    assert batch is not None and batch.recipients == 1
