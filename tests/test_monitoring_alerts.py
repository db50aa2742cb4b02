"""SLO alerts: multi-window burn rates over the rolling window."""

import pytest

from labkit.layers.metrics import RequestRecord
from labkit.monitoring import Metrics
from labkit.monitoring.alerts import AlertRule, Alerts, availability_slo, cache_hit_slo, ttfb_slo


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def add(metrics, n, outcome="ok", source="upstream", ttft=0.3):
    for _ in range(n):
        metrics.record(RequestRecord(key="k", model="gpt-4o", stream=True, started=0.0, latency_s=ttft + 0.5,
                                     ttft_s=ttft, outcome=outcome, source=source))  # fmt: skip


def fired(alerts, slo):
    return {a.severity for a in alerts.evaluate() if a.slo == slo and a.firing}


@pytest.fixture
def setup():
    clock = FakeClock()
    metrics = Metrics(window_s=60, slot_s=1, clock=clock)
    return clock, metrics, Alerts(metrics, [availability_slo(), ttfb_slo(), cache_hit_slo()])


def test_availability_pages_when_both_windows_burn(setup):
    _, metrics, alerts = setup
    add(metrics, 95)
    add(metrics, 5, outcome="InternalServerError")  # 5 % errors: burn 50 against a 0.1 % budget
    assert fired(alerts, "availability") == {"page", "ticket"}


def test_an_error_burst_that_ended_stops_paging(setup):
    clock, metrics, alerts = setup
    add(metrics, 50, outcome="InternalServerError")
    clock.now += 20  # the short windows (5 s, 15 s) now hold only healthy traffic
    add(metrics, 500)
    assert fired(alerts, "availability") == set()
    page = next(a for a in alerts.history[::-1] if a.slo == "availability" and a.severity == "page")
    assert page.burn_long > 14.4  # the long window still remembers


def test_slow_first_bytes_fire_the_ttfb_alert(setup):
    _, metrics, alerts = setup
    add(metrics, 60)
    add(metrics, 40, ttft=1.5)  # 40 % over 1 s against a 5 % budget
    assert "page" in fired(alerts, "ttfb")


def test_a_low_hit_rate_opens_a_ticket_and_a_high_one_does_not(setup):
    _, metrics, alerts = setup
    add(metrics, 30, source="cache")
    add(metrics, 70)
    assert fired(alerts, "cache_hit_rate") == {"ticket"}
    add(metrics, 900, source="cache")
    assert fired(alerts, "cache_hit_rate") == set()


def test_too_few_events_never_fire(setup):
    _, metrics, alerts = setup
    add(metrics, 3, outcome="InternalServerError")
    assert fired(alerts, "availability") == set()


def test_a_window_longer_than_the_metrics_keep_is_refused():
    with pytest.raises(ValueError, match="keeps 10"):
        Alerts(Metrics(window_s=10), [availability_slo(rules=(AlertRule("page", 14.4, long_s=60),))])
    with pytest.raises(ValueError):
        availability_slo(objective=1.0)
