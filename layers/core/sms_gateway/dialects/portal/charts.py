"""Delivery-rate charts drawn server-side as inline SVG (no script, no chart library), each with its figures in a
table too: the SVG has a title and description for screen readers, and the table carries every number."""

from __future__ import annotations

from collections.abc import Sequence

from sms_gateway.dialects.portal.markup import esc, table
from sms_gateway.domain.status import MessageStatus
from sms_gateway.logic.history import FINAL_OUTCOMES, DeliveryPoint

# Drawing units (the SVG scales to its container through its viewBox).
WIDTH = 640
PLOT_TOP = 24
PLOT_HEIGHT = 160
AXIS_LEFT = 44
LABEL_BAND = 36
ROW_HEIGHT = 26
NETWORK_LABEL_WIDTH = 110
BAR_COLOUR = "#2f7d4f"
EMPTY_COLOUR = "#b8b8b8"
GRID_COLOUR = "#d0d0d0"
TEXT_COLOUR = "#222222"
_OTHER_STATUSES = [s for s in MessageStatus if s not in FINAL_OUTCOMES]


def percent(rate: float | None) -> str:
    """A whole percent, except where rounding would say every message or none when that is not so: 1999 of 2000
    delivered reads 99.9%, not 100% (which hid the failure), and 1 of 2000 reads 0.1%, not 0%."""
    if rate is None:
        return "n/a"
    whole = round(rate * 100)
    if whole == 100 and rate < 1:
        return f"{min(round(rate * 1000), 999) / 10:.1f}%"
    if whole == 0 and rate > 0:
        return f"{max(round(rate * 1000), 1) / 10:.1f}%"
    return f"{whole}%"


def describe(point: DeliveryPoint) -> str:
    if point.rate is None:
        waiting = point.total
        return f"{point.label}: no outcome yet" + (
            f" ({waiting} messages on their way or cancelled)" if waiting else ""
        )
    return f"{point.label}: {point.delivered} of {point.with_outcome} delivered ({percent(point.rate)})"


def _svg(chart_id: str, title: str, summary: str, height: int, body: str) -> str:
    return (
        f'<svg class="chart" id="{esc(chart_id)}" role="img" viewBox="0 0 {WIDTH} {height}" '
        f'width="100%" preserveAspectRatio="xMinYMin meet" '
        f'aria-labelledby="{esc(chart_id)}-title {esc(chart_id)}-desc" font-family="sans-serif" font-size="11">'
        f'<title id="{esc(chart_id)}-title">{esc(title)}</title>'
        f'<desc id="{esc(chart_id)}-desc">{esc(summary)}</desc>{body}</svg>'
    )


def rate_over_time(points: Sequence[DeliveryPoint], *, chart_id: str, title: str) -> str:
    """One vertical bar per period, as tall as its delivery rate; periods without an outcome show n/a."""
    band = (WIDTH - AXIS_LEFT) / max(len(points), 1)
    base = PLOT_TOP + PLOT_HEIGHT
    parts = []
    for share in (0.0, 0.5, 1.0):
        y = base - share * PLOT_HEIGHT
        parts.append(
            f'<line x1="{AXIS_LEFT}" x2="{WIDTH}" y1="{y:.1f}" y2="{y:.1f}" stroke="{GRID_COLOUR}"/>'
            f'<text x="{AXIS_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" fill="{TEXT_COLOUR}">'
            f"{round(share * 100)}%</text>"
        )
    every = max(1, len(points) // 12)
    crowded = len(points) > 12
    for index, point in enumerate(points):
        x = AXIS_LEFT + index * band
        centre = x + band / 2
        height = (point.rate or 0.0) * PLOT_HEIGHT
        colour = BAR_COLOUR if point.rate is not None else EMPTY_COLOUR
        parts.append(
            f'<g class="bar" data-label="{esc(point.label)}" data-rate="{percent(point.rate)}">'
            f"<title>{esc(describe(point))}</title>"
            f'<rect x="{x + band * 0.15:.1f}" y="{base - height:.1f}" width="{band * 0.7:.1f}" '
            f'height="{max(height, 1):.1f}" fill="{colour}"/>'
            f'<text x="{centre:.1f}" y="{base - height - 4:.1f}" text-anchor="middle" fill="{TEXT_COLOUR}">'
            f"{_bar_label(point, crowded)}</text></g>"
        )
        if index % every == 0:
            short = point.label[5:] if len(point.label) == 10 else point.label[11:]
            parts.append(
                f'<text x="{centre:.1f}" y="{base + 16}" text-anchor="middle" fill="{TEXT_COLOUR}">{esc(short)}</text>'
            )
    return _svg(chart_id, title, _summary(points), base + LABEL_BAND, "".join(parts))


def _bar_label(point: DeliveryPoint, crowded: bool) -> str:
    """The rate over a bar; among many bars an empty period stays unlabelled (its <title> still says so)."""
    return "" if crowded and point.rate is None else percent(point.rate)


def rate_by_network(points: Sequence[DeliveryPoint], *, chart_id: str, title: str) -> str:
    """One horizontal bar per network, as long as its delivery rate."""
    span = WIDTH - NETWORK_LABEL_WIDTH - 140
    parts = []
    for index, point in enumerate(points):
        y = PLOT_TOP + index * ROW_HEIGHT
        length = (point.rate or 0.0) * span
        colour = BAR_COLOUR if point.rate is not None else EMPTY_COLOUR
        figures = f"{percent(point.rate)} ({point.delivered}/{point.with_outcome})"
        parts.append(
            f'<g class="bar" data-label="{esc(point.label)}" data-rate="{percent(point.rate)}">'
            f"<title>{esc(describe(point))}</title>"
            f'<text x="{NETWORK_LABEL_WIDTH - 8}" y="{y + 14}" text-anchor="end" fill="{TEXT_COLOUR}">'
            f"{esc(point.label)}</text>"
            f'<rect x="{NETWORK_LABEL_WIDTH}" y="{y + 3}" width="{max(length, 1):.1f}" height="{ROW_HEIGHT - 8}" '
            f'fill="{colour}"/>'
            f'<text x="{NETWORK_LABEL_WIDTH + length + 6:.1f}" y="{y + 14}" fill="{TEXT_COLOUR}">{figures}</text></g>'
        )
    height = PLOT_TOP + max(len(points), 1) * ROW_HEIGHT + 8
    return _svg(chart_id, title, _summary(points), height, "".join(parts))


def _summary(points: Sequence[DeliveryPoint]) -> str:
    known = [point for point in points if point.rate is not None]
    if not known:
        return "No message has a delivery outcome yet."
    return "; ".join(describe(point) for point in known) + "."


def figures_table(points: Sequence[DeliveryPoint], *, first_header: str, empty: str) -> str:
    """Every figure behind a chart: messages per status and the rate."""
    headers = [first_header, *(str(s).capitalize() for s in FINAL_OUTCOMES), "Other", "Delivery rate"]
    rows = [
        [
            esc(point.label),
            *(str(point.counts.get(str(status), 0)) for status in FINAL_OUTCOMES),
            str(sum(point.counts.get(str(status), 0) for status in _OTHER_STATUSES)),
            percent(point.rate),
        ]
        for point in points
        if point.total
    ]
    return table(headers, rows, empty=empty)
