"""The portal's delivery-rate charts: accessible SVG whose figures are also in a table, and no markup from data."""

from __future__ import annotations

from sms_gateway.dialects.portal.charts import figures_table, rate_by_network, rate_over_time
from sms_gateway.logic.history import DeliveryPoint

DAYS = [
    DeliveryPoint(label="2026-11-30", counts={}),
    DeliveryPoint(label="2026-12-01", counts={"delivered": 3, "failed": 1, "submitted": 2}),
]


def test_a_bar_per_period_with_its_rate_and_a_title_and_description_for_screen_readers():
    svg = rate_over_time(DAYS, chart_id="chart-days", title="Delivery rate per day")
    assert svg.startswith('<svg class="chart" id="chart-days" role="img"')
    assert 'aria-labelledby="chart-days-title chart-days-desc"' in svg
    assert '<title id="chart-days-title">Delivery rate per day</title>' in svg
    assert '<desc id="chart-days-desc">2026-12-01: 3 of 4 delivered (75%).</desc>' in svg
    assert 'data-label="2026-11-30" data-rate="n/a"' in svg and 'data-label="2026-12-01" data-rate="75%"' in svg
    # No inline style: the portal's Content-Security-Policy forbids it.
    assert "style=" not in svg


def test_the_table_carries_every_figure_and_leaves_out_empty_periods():
    html = figures_table(DAYS, first_header="Day", empty="none")
    assert "2026-11-30" not in html
    assert "<td>2026-12-01</td><td>3</td><td>1</td><td>0</td><td>0</td><td>2</td><td>75%</td>" in html
    assert figures_table(DAYS[:1], first_header="Day", empty="No messages.") == '<p class="empty">No messages.</p>'


def test_labels_from_data_are_escaped():
    hostile = DeliveryPoint(label='<script>alert("x")</script>', counts={"delivered": 1})
    svg = rate_by_network([hostile], chart_id="chart-networks", title="By network")
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert "<script>" not in figures_table([hostile], first_header="Network", empty="none")


def test_a_rate_short_of_all_or_above_none_never_reads_100_or_0_percent():
    def shown(delivered: int, failed: int) -> str:
        counts = {"delivered": delivered, "failed": failed}
        return figures_table([DeliveryPoint(label="mtn", counts=counts)], first_header="Network", empty="none")

    # 1999 of 2000 delivered is not every message: 99.9%, not 100% (one failure hidden)
    assert "<td>99.9%</td>" in shown(1999, 1) and "100%" not in shown(1999, 1)
    assert "<td>100%</td>" in shown(2000, 0)
    # and 1 of 2000 is not none
    assert "<td>0.1%</td>" in shown(1, 1999)
    assert "<td>0%</td>" in shown(0, 2000) and "<td>0.3%</td>" in shown(1, 299)
    # Everything else as a whole percent, rounded
    assert "<td>75%</td>" in shown(3, 1) and "<td>99%</td>" in shown(99, 1) and "<td>99.5%</td>" in shown(199, 1)
