"""Chapters 09 (retries) and 10 (breakers, balancing, hedging): the resilience layers assembled, and the
experiments the notebooks and the benchmark share.

The chain, outermost first (`ChainConfig.preset("resilience")`, built by `labkit.assemble.build_chain` like every
chain; see docs/ARCHITECTURE.md, "One builder")::

    RetryLayer -> [HedgeLayer] -> Balancer -> per endpoint: CircuitBreaker -> StreamGuard -> transport

The retry and hedge layers talk to the balancer only through two request controls: `avoid_endpoints` (names the
next attempt should not use) and `route_log` (a list the balancer appends the chosen name to). The breaker is the
per-endpoint layer the balancer consults through `allows()`. Nothing imports anything else's layer.

- `workload`: send a workload through a chain, summarise what the caller saw and what the services counted;
- `failures`: the retry decision table on real errors, and the retry budget against a sick upstream;
- `routing`: the breaker/fallback timeline, the balancing strategies, hedging;
- `headline`: the failure share under injected faults per client (each arm a config of the one builder);
- `chapters`: the notebooks' harness, progress bar, charts, tables and results dicts;
- `__main__`: `python -m labkit.lessons.resilience --bench [--out build/bench/resilience.json]`.
"""

from labkit.lessons.resilience.failures import DECISION_CASES, decision_table, sick_upstream
from labkit.lessons.resilience.headline import HEADLINE_ARMS, chain_counters, headline, headline_configs
from labkit.lessons.resilience.routing import (
    BALANCING_PHASES,
    BREAKER_PHASES,
    TIMELINE_BREAKER,
    breaker_settings,
    breaker_timeline,
    compare_balancers,
    compare_hedging,
)
from labkit.lessons.resilience.workload import fault_mix, run_workload, summarize_runs, upstream_totals

__all__ = [
    "BALANCING_PHASES",
    "BREAKER_PHASES",
    "DECISION_CASES",
    "HEADLINE_ARMS",
    "TIMELINE_BREAKER",
    "breaker_settings",
    "breaker_timeline",
    "chain_counters",
    "compare_balancers",
    "compare_hedging",
    "decision_table",
    "fault_mix",
    "headline",
    "headline_configs",
    "run_workload",
    "sick_upstream",
    "summarize_runs",
    "upstream_totals",
]
