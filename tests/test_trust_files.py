"""randwire_d2/trust/files.py: only regular files are read, each within its kind's bound."""

import contextlib
import os
import signal

import pytest
from common import tiny_cfg
from detectron2.modeling import build_model

from randwire_d2.checkpoint import build_checkpointer, read_checkpoint
from randwire_d2.config import load_config
from randwire_d2.graphs import NetworkWiring

# A file that is not regular, or too large, is a ValueError (trust.FileTrustError) naming it.
FileTrustError = ValueError


@contextlib.contextmanager
def deadline(seconds=10):
    """Fail instead of hanging (a FIFO opened for reading blocks until a writer comes)."""

    def expired(signum, frame):
        raise TimeoutError(f"still blocked after {seconds} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_a_fifo_or_a_device_is_refused_without_blocking(tmp_path):
    from randwire_d2.data.imagefolder import read_rgb_image
    from randwire_d2.predict import read_video

    fifo = str(tmp_path / "wiring.fifo")
    os.mkfifo(fifo)
    with deadline():
        for path, kind in ((fifo, r"a FIFO \(named pipe\)"), ("/dev/zero", "a character device")):
            with pytest.raises(FileTrustError, match=f"is {kind}, not a regular file"):
                NetworkWiring.load(path)
            with pytest.raises(FileTrustError, match=f"WIRING_FILE='{path}' is {kind}"):
                build_model(tiny_cfg("MODEL.RANDWIRE.WIRING_FILE", path))
            with pytest.raises(FileTrustError, match=f"MODEL.WEIGHTS='{path}' is {kind}"):
                read_checkpoint(path)
            with pytest.raises(FileTrustError, match=f"is {kind}"):
                load_config(path)
            with pytest.raises(ValueError, match=f"is {kind}"):  # predict's images, training's
                read_rgb_image(path)
            with pytest.raises(FileTrustError, match=f"--video-input='{path}' is {kind}"):
                read_video(path)


def test_a_file_larger_than_its_kind_is_refused(tmp_path, monkeypatch):
    from randwire_d2.trust import files, read_bounded

    path = tmp_path / "w.json"
    path.write_text("x" * 100)
    monkeypatch.setitem(files.LIMITS, "wiring", 99)
    with pytest.raises(FileTrustError, match=r"w\.json' is 100 bytes, more than the 99 bytes"):
        read_bounded(path, "WIRING_FILE", "wiring")


def test_last_checkpoint_that_is_a_fifo_does_not_block(tmp_path):
    os.mkfifo(tmp_path / "last_checkpoint")
    checkpointer = build_checkpointer(build_model(tiny_cfg()), str(tmp_path))
    with deadline():
        with pytest.raises(FileTrustError, match=r"last_checkpoint=.* is a FIFO"):
            checkpointer.get_checkpoint_file()
