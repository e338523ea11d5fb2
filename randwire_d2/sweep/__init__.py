"""The paper's experiments as sweeps (tools/sweep.py): plan.py expands and runs them (locally or
through submitit), report.py aggregates them into the tables and figures of Fig. 3/6, Tables 2-4."""

from .plan import (
    MAX_RUNS,
    NODE_OPS,
    PRESETS,
    Run,
    RunInProgressElsewhere,
    check_results,
    expand,
    held_by,
    load_records,
    matching_channels,
    parse_generators,
    read_results,
    run_state,
    run_sweep,
    save_plan,
    submit_sweep,
)
