"""The OUTPUT_DIR of a run: held by one run at a time (a lock file naming the holder), checkpoints
of an earlier run refused unless resumed or overwritten, and metrics.json trimmed to the
iterations before the checkpoint a run resumes from."""

import fcntl
import glob
import json
import logging
import os
import socket
import sys
import time
from typing import Optional

from detectron2.utils import comm

__all__ = [
    "OutputDirInUse",
    "claim_output_dir",
    "release_output_dir",
    "truncate_metrics",
    "metrics_record",
    "has_metric",
]

logger = logging.getLogger(__name__)
_HELD_OUTPUT_DIRS = {}  # absolute path -> the open, locked lock file of this process


class OutputDirInUse(RuntimeError):
    """OUTPUT_DIR is held by another live process; `holder` is what its lock file says. The
    pretraining entry point exits with its own status for it."""

    def __init__(self, output_dir: str, holder: str):
        super().__init__(
            f"OUTPUT_DIR={output_dir!r} is in use by {holder}. Two runs in one OUTPUT_DIR "
            "overwrite each other's checkpoints and metrics: choose another OUTPUT_DIR."
        )
        self.output_dir, self.holder = output_dir, holder

    def __reduce__(self):  # pickled with its arguments (a spawned process, a submitit job)
        return type(self), (self.output_dir, self.holder)


def claim_output_dir(output_dir: str, resume: bool = True, overwrite: bool = False) -> bool:
    """Hold OUTPUT_DIR for this run (main process) and return whether this call took it; one
    another process holds raises OutputDirInUse. Without `resume`, an earlier run's checkpoints
    are refused unless `overwrite` (deletes them). Removes a killed run's .tmp_* files."""
    if not comm.is_main_process():
        return False
    path = os.path.abspath(output_dir)
    took = path not in _HELD_OUTPUT_DIRS
    if took:
        os.makedirs(path, exist_ok=True)
        f = open(os.path.join(path, ".lock"), "a+")
        try:  # a POSIX lock: per process, not inherited by data loader workers
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read(1000).strip() or "another process"  # a line this module wrote
            f.close()
            raise OutputDirInUse(output_dir, holder) from None
        f.truncate(0)
        f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.ctime()}: ")
        f.write(" ".join(sys.argv) + "\n")
        f.flush()
        _HELD_OUTPUT_DIRS[path] = f
    for tmp in glob.glob(os.path.join(path, ".tmp_*")):
        os.remove(tmp)  # we hold the directory: no one else is writing it
    old = sorted(glob.glob(os.path.join(path, "*.pth")) + glob.glob(os.path.join(path, "last_*")))
    if old and not resume:
        names = ", ".join(os.path.basename(p) for p in old[:4]) + (", ..." if len(old) > 4 else "")
        if not overwrite:
            if took:
                release_output_dir(path)
            raise FileExistsError(
                f"OUTPUT_DIR={output_dir!r} holds checkpoints of an earlier run ({names}): pass "
                "--resume to continue it, choose another OUTPUT_DIR, or pass --overwrite to "
                "delete them and start over"
            )
        for p in old + glob.glob(os.path.join(path, "metrics.json")):
            os.remove(p)
        logger.warning(f"--overwrite: deleted {names} and metrics.json of {output_dir}")
    return took


def release_output_dir(output_dir: str) -> None:
    f = _HELD_OUTPUT_DIRS.pop(os.path.abspath(output_dir), None)
    if f is not None:
        f.close()


def truncate_metrics(output_dir: str, start_iter: int) -> None:
    """Drop metrics.json lines of iterations >= start_iter, so that each appears once."""
    path = os.path.join(output_dir, "metrics.json")
    if not comm.is_main_process() or not os.path.isfile(path):
        return
    with open(path, "r+") as f:
        lines = f.readlines()
        keep = [ln for ln in lines if not ln.strip() or _iteration(ln) < start_iter]
        f.seek(0)
        f.writelines(keep)
        f.truncate()
    if len(keep) < len(lines):
        logger.info(
            f"metrics.json: dropped {len(lines) - len(keep)} lines after iteration {start_iter - 1}"
        )


def _iteration(line: str) -> int:
    record = metrics_record(line)
    return -1 if record is None else record["iteration"]


def metrics_record(line: str) -> Optional[dict]:
    """A metrics.json line as a dict with an integer "iteration"; else None (e.g. a cut line)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    ok = isinstance(record, dict) and isinstance(record.get("iteration"), int)
    return record if ok else None


def has_metric(output_dir: str, iteration: int, metric: str) -> bool:
    """Whether metrics.json of `output_dir` holds `metric` at `iteration`."""
    path = os.path.join(output_dir, "metrics.json")
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        for line in f:
            record = metrics_record(line)
            if record is not None and record["iteration"] == iteration and metric in record:
                return True
    return False
