"""The capstone (lesson 08): one realistic workload, the naive client and labkit's full chain, measured end to end.

- `workload`: the seeded workloads of `data/capstone_workloads.json` (`WorkloadSpec`, `generate`) and their
  ceiling (what no cache can beat).
- `run`: `run_open_loop` sends each request at its scheduled time whatever the client does; `chain_caller` and
  `naive_caller` adapt the two clients.
- `table`: `summarize` (one run's row values), `before_after` (the table), `ablation_shares` (each layer's share of
  each row's gain).
- `experiment`: `measure` (one run on fresh services), `max_sustainable_rate` (the throughput row's doubling
  ladder), `concurrency_test`, `compare` (naive vs full) and `ablation`.
- `arms`: the three arms of the guide's table (before, the guide's snippets, labkit), the time-compressed lab, the
  95% Wilson interval; `guide_table`: `compare_arms` (the guide's table with its own figures beside), `lever_runs`,
  `cost_breakdown` and `roadmap`.
- `python -m labkit.lessons.capstone --bench [--quick]` runs the whole comparison and writes
  `build/bench/capstone.json`.

The notebook and the tests use the names below from here (`from labkit.lessons import capstone`).
"""

from __future__ import annotations

from labkit.lab.workload import zipf_weights
from labkit.lessons.capstone.arms import (
    GUIDE_FIGURES,
    Arm,
    arms,
    levers,
    run_arm,
    scaled_spec,
    start_scaled_lab,
    wilson,
)
from labkit.lessons.capstone.chapter import (
    CHECKLIST_TITLE,
    arms_chart,
    ceiling_table,
    checklist_report,
    results,
    roadmap_table,
    scorecard,
    stage_bar,
    try_faults,
    try_step,
)
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
from labkit.lessons.capstone.guide_table import (
    breakdown_frame,
    compare_arms,
    cost_breakdown,
    guide_frame,
    guide_rows,
    lever_runs,
    roadmap,
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
    trimmed,
    without_deferred,
)

__all__ = [
    "CHECKLIST_TITLE",
    "ERROR_BUDGET",
    "GUIDE_FIGURES",
    "ROWS",
    "TARGETS",
    "WORKLOADS_FILE",
    "Arm",
    "Call",
    "IncompleteAnswer",
    "Item",
    "RunResult",
    "Workload",
    "WorkloadSpec",
    "ablation",
    "ablation_shares",
    "arms",
    "arms_chart",
    "before_after",
    "best_cost_change",
    "breakdown_frame",
    "burst",
    "capacity",
    "ceiling_table",
    "chain_caller",
    "checklist_report",
    "client_side_cost",
    "compare",
    "compare_arms",
    "concurrency_test",
    "contexts",
    "cost_breakdown",
    "generate",
    "guide_frame",
    "guide_rows",
    "lever_runs",
    "levers",
    "max_sustainable_rate",
    "measure",
    "naive_caller",
    "poisson_arrivals",
    "results",
    "roadmap",
    "roadmap_table",
    "run_arm",
    "run_open_loop",
    "run_workload",
    "scaled_spec",
    "scorecard",
    "set_faults",
    "settings",
    "stage_bar",
    "start_capstone_lab",
    "start_scaled_lab",
    "summarize",
    "trimmed",
    "try_faults",
    "try_step",
    "upstream_cost",
    "wilson",
    "without_deferred",
    "zipf_weights",
]
