"""The capstone (lesson 08): one realistic workload, the naive client and labkit's full chain, measured end to end.

- `workload`: the seeded workloads of `data/capstone_workloads.json` (`WorkloadSpec`, `generate`) and their
  ceiling (what no cache can beat).
- `run`: `run_open_loop` sends each request at its scheduled time whatever the client does; `chain_caller` and
  `naive_caller` adapt the two clients.
- `table`: `summarize` (one run's row values), `before_after` (the table), `ablation_shares` (each layer's share of
  each row's gain).
- `experiment`: `measure` (one run on fresh services), `max_sustainable_rate` (the throughput row's doubling
  ladder), `concurrency_test`, `compare` (naive vs full) and `ablation`.
- `python -m labkit.lessons.capstone --bench [--quick]` runs the whole comparison and writes
  `build/bench/capstone.json`.

The notebook and the tests use the names below from here (`from labkit.lessons import capstone`).
"""

from __future__ import annotations

from labkit.lab.workload import zipf_weights
from labkit.lessons.capstone.experiment import (
    ERROR_BUDGET,
    ablation,
    capacity,
    compare,
    concurrency_test,
    max_sustainable_rate,
    measure,
    run_workload,
    set_faults,
    start_capstone_lab,
)
from labkit.lessons.capstone.run import (
    Call,
    IncompleteAnswer,
    RunResult,
    chain_caller,
    naive_caller,
    run_open_loop,
)
from labkit.lessons.capstone.table import (
    ROWS,
    TARGETS,
    ablation_shares,
    before_after,
    best_cost_change,
    client_side_cost,
    summarize,
    upstream_cost,
)
from labkit.lessons.capstone.workload import (
    WORKLOADS_FILE,
    Item,
    Workload,
    WorkloadSpec,
    burst,
    contexts,
    generate,
    poisson_arrivals,
    settings,
)

__all__ = [
    "ERROR_BUDGET",
    "ROWS",
    "TARGETS",
    "WORKLOADS_FILE",
    "Call",
    "IncompleteAnswer",
    "Item",
    "RunResult",
    "Workload",
    "WorkloadSpec",
    "ablation",
    "ablation_shares",
    "before_after",
    "best_cost_change",
    "burst",
    "capacity",
    "chain_caller",
    "client_side_cost",
    "compare",
    "concurrency_test",
    "contexts",
    "generate",
    "max_sustainable_rate",
    "measure",
    "naive_caller",
    "poisson_arrivals",
    "run_open_loop",
    "run_workload",
    "set_faults",
    "settings",
    "start_capstone_lab",
    "summarize",
    "upstream_cost",
    "zipf_weights",
]
