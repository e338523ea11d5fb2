"""Atomic file writes: a crash, a full disk or SIGTERM mid-write never leaves a half-written file
where a user's file was."""

import contextlib
import errno
import os
import shutil
import signal
import tempfile
import threading
from typing import List

import torch

__all__ = ["atomic_write", "atomic_torch_save"]


def atomic_write(path: str, write, mode: str = "wb") -> None:
    """write(file) to a temporary file in the same folder, then rename: a crash mid-write leaves
    the previous file intact. The file gets the umask's permissions (mkstemp's are 0600).

    A full disk raises an OSError (ENOSPC) naming the file and the free space. SIGTERM during the
    write, where it would end the process at once (its default action, in the main thread),
    first removes the temporary file, then ends the process as SIGTERM does.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary: List[str] = []
    try:
        with _removed_on_sigterm(temporary):
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_")
            temporary.append(tmp)
            with os.fdopen(fd, mode) as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            os.replace(tmp, path)
    except BaseException as e:
        for tmp in temporary:
            if os.path.exists(tmp):
                os.remove(tmp)
        if _is_disk_full(e):
            raise _disk_full_error(path, folder) from e
        raise


@contextlib.contextmanager
def _removed_on_sigterm(paths: List[str]):
    """Within the block, SIGTERM removes `paths` before it ends the process. Only where SIGTERM
    has its default action: a Python handler that raises lets atomic_write clean up itself, one
    that returns lets the write finish. Signal handlers can only be set in the main thread."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return

    def remove_then_terminate(signum, frame):
        for p in paths:
            with contextlib.suppress(OSError):
                os.remove(p)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, remove_then_terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _is_disk_full(error: BaseException) -> bool:
    """ENOSPC anywhere in the exception chain: torch.save reports it as a RuntimeError of
    inline_container.cc, with the OSError of the failed write as its context."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        text = str(error)
        if getattr(error, "errno", None) == errno.ENOSPC or "No space left on device" in text:
            return True
        error = error.__cause__ or error.__context__
    return False


def _disk_full_error(path: str, folder: str) -> OSError:
    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:.1f} MiB free in {folder}"
    except OSError:
        free = f"free space in {folder} unknown"
    if os.path.exists(path):
        kept = f"the previous {path} is intact"
    else:
        kept = f"nothing was written to {path}; the files already in {folder} are intact"
    return OSError(
        errno.ENOSPC,
        f"cannot write {path}: the disk is full ({free}); {kept}. Free some space and run again",
    )


def atomic_torch_save(obj, path: str) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))
