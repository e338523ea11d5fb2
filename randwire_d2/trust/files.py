"""Files a user gives are data: opened only when they are regular files, read with a byte bound
per kind. A FIFO, a device (`/dev/zero`) or a directory is refused before a byte is read, so
nothing hangs on a pipe or reads without end; a file larger than its kind's bound is refused
naming its size and the bound."""

import io
import os
import stat
from typing import Union

__all__ = ["LIMITS", "FileTrustError", "open_regular", "read_bounded"]

MiB = 2**20
# The largest file of each kind the tools read (bytes).
LIMITS = {
    "config": 4 * MiB,  # yaml and saved LazyConfig files: a few KB each
    "wiring": 64 * MiB,  # NetworkWiring json: a few KB at the paper's sizes
    "dataset": 4096 * MiB,  # a COCO-format annotation json (COCO train2017: 448 MiB)
    "results": 64 * MiB,  # results and metrics json of a run or a sweep
    "weights": 16384 * MiB,  # .pth / .pkl / .pyth checkpoints (C=154 + optimizer: ~0.5 GiB)
    "image": 256 * MiB,  # one image file (MAX_IMAGE_PIXELS pixels compress to far less)
    "video": 65536 * MiB,  # one video file, streamed by OpenCV
    "marker": 64 * 1024,  # a small state file of a run (last_checkpoint, a manifest)
}


class FileTrustError(ValueError):
    """A file that is not a regular file, or is larger than its kind's bound."""


def _kind_limit(kind: str) -> int:
    if kind not in LIMITS:
        raise KeyError(f"file kind {kind!r} is unknown: expected one of {sorted(LIMITS)}")
    return LIMITS[kind]


def open_regular(path: Union[str, os.PathLike], what: str, kind: str, mode: str = "rb"):
    """`path` opened for reading when it is a regular file (symlinks to one too) of at most
    LIMITS[kind] bytes; else FileTrustError naming `what` (the key or flag), the file and why.
    The open itself cannot block: a FIFO is opened non-blocking, then refused."""
    if mode not in ("rb", "r"):
        raise ValueError(f"open_regular reads only: mode {mode!r}")
    limit = _kind_limit(kind)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise FileNotFoundError(f"{what}={str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise FileTrustError(f"{what}={str(path)!r} is a directory, not a file") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileTrustError(
                f"{what}={str(path)!r} is {_describe_mode(st.st_mode)}, not a regular file: "
                "give a file on disk"
            )
        if st.st_size > limit:
            raise FileTrustError(
                f"{what}={str(path)!r} is {st.st_size} bytes, more than the {limit} bytes "
                f"({limit / MiB:.0f} MiB) a {kind} file may have: is it the right file?"
            )
        if hasattr(os, "O_NONBLOCK"):
            os.set_blocking(fd, True)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    return io.TextIOWrapper(f, encoding="utf-8") if mode == "r" else f


def read_bounded(path: Union[str, os.PathLike], what: str, kind: str, text: bool = False):
    """The contents of regular file `path` (bytes, or str with `text`), at most LIMITS[kind]
    bytes even if the file grows while it is read."""
    limit = _kind_limit(kind)
    with open_regular(path, what, kind, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise FileTrustError(
            f"{what}={str(path)!r} grew past the {limit} bytes a {kind} file may have while it "
            "was read"
        )
    if not text:
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FileTrustError(f"{what}={str(path)!r} is not UTF-8 text: {e}") from None


def _describe_mode(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a directory"),
    ):
        if test(mode):
            return name
    return "not a regular file"
