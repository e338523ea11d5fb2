"""The paper's experiments as sweeps (tools/sweep.py), each run an ordinary tools/train_cls.py run.

plan.py    what runs: generator settings x node ops x seeds as Runs, presets, C per node op
store.py   run state and results on disk: finished / interrupted / held runs, sweep.json
runner.py  running the runs: locally (--jobs) or as submitit jobs (Slurm)
report.py  the tables and figures of Fig. 3/6, Tables 2-4 from the results
"""

from .plan import (
    MAX_RUNS,
    NODE_OPS,
    PRESETS,
    Run,
    expand,
    matching_channels,
    parse_generators,
    run_complexity,
)
from .runner import RunInProgressElsewhere, run_sweep, submit_sweep
from .store import check_results, held_by, load_records, read_results, run_state, save_plan
