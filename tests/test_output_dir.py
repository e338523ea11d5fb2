"""randwire_d2/engine/output_dir.py: OUTPUT_DIR held by one run; metrics.json cut on resume."""

import subprocess
import sys

import pytest
from common import REPO, read_metrics

from randwire_d2.engine import claim_output_dir
from randwire_d2.engine.output_dir import release_output_dir, truncate_metrics

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_a_held_output_dir_is_refused_naming_the_holder(tmp_path):
    code = (
        "import sys, time; from randwire_d2.engine import claim_output_dir; "
        "claim_output_dir(sys.argv[1]); print('held', flush=True); time.sleep(120)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RuntimeError, match=rf"in use by pid {holder.pid} on .*-c"):
            claim_output_dir(str(tmp_path))
    finally:
        holder.kill()
        holder.wait()
    assert claim_output_dir(str(tmp_path))  # a killed holder frees it: no stale lock
    release_output_dir(str(tmp_path))


def test_metrics_of_iterations_after_the_resumed_checkpoint_are_dropped(tmp_path):
    lines = [f'{{"iteration": {i}, "total_loss": 1.0}}\n' for i in (0, 1, 2, 3)]
    (tmp_path / "metrics.json").write_text("".join(lines))
    truncate_metrics(str(tmp_path), 2)
    assert [it for it, _ in read_metrics(tmp_path)] == [0, 1]


def test_metrics_lines_that_are_json_but_not_records_do_not_stop_a_resume(tmp_path):
    """A metrics.json line that parses but is not a record (a list, a number, a string) is
    kept as unreadable, in truncate_metrics (resume) and in a sweep's final_results."""
    from randwire_d2.sweep.store import final_results

    lines = ['{"iteration": 0, "val_32/top1": 50.0}\n', "[1, 2]\n", "7\n", '"x"\n']
    lines.append('{"iteration": 3, "total_loss": 1.0}\n')
    (tmp_path / "metrics.json").write_text("".join(lines))
    assert final_results(str(tmp_path)) is None  # the last iteration (3) has no evaluation
    truncate_metrics(str(tmp_path), 2)
    kept = (tmp_path / "metrics.json").read_text().splitlines()
    assert kept == [ln.strip() for ln in lines[:4]]
