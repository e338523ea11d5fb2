"""randwire_d2/utils/atomic.py: a full disk or SIGTERM mid-write leaves no half-written file."""

import errno
import os
import signal
import subprocess
import sys

import pytest
import torch
from common import REPO

from randwire_d2.utils.atomic import atomic_torch_save, atomic_write

pytestmark = pytest.mark.usefixtures("one_thread")


def _torch_style_full_disk(obj, f):
    """torch.save on a full disk: the write's OSError, then inline_container.cc's RuntimeError."""
    f.write(b"\0" * 64)
    try:
        raise OSError(errno.ENOSPC, "No space left on device")
    except OSError:
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0")


def _message_only_full_disk(obj, f):
    raise RuntimeError(
        "[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
        "data/0: file write failed (No space left on device)"
    )


@pytest.mark.parametrize("save", [_torch_style_full_disk, _message_only_full_disk])
def test_a_full_disk_is_named_and_the_previous_checkpoint_kept(save, tmp_path, monkeypatch):
    path = str(tmp_path / "model_final.pth")
    atomic_torch_save({"w": torch.ones(2)}, path)
    before = open(path, "rb").read()
    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(OSError) as caught:
        atomic_torch_save({"w": torch.zeros(2)}, path)
    assert caught.value.errno == errno.ENOSPC
    message = str(caught.value)
    assert f"cannot write {path}: the disk is full (" in message
    assert " MiB free in " in message and f"the previous {path} is intact" in message
    assert open(path, "rb").read() == before
    assert os.listdir(tmp_path) == ["model_final.pth"]  # no .tmp_* left


def test_other_write_errors_pass_through_unchanged(tmp_path):
    def broken(f):
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="^a bug$"):
        atomic_write(str(tmp_path / "x"), broken)
    assert os.listdir(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler was restored


SLOW_WRITER = """
import sys, time
from randwire_d2.utils.atomic import atomic_write

def slow(f):
    f.write(b"partial")
    f.flush()
    print("writing", flush=True)
    for _ in range(1200):
        time.sleep(0.05)

atomic_write(sys.argv[1], slow)
"""


@pytest.mark.slow
def test_sigterm_during_a_write_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "model_final.pth"
    target.write_bytes(b"previous")
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITER, str(target)],
        cwd=REPO,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline() == "writing\n"
        assert any(n.startswith(".tmp_") for n in os.listdir(tmp_path))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == -signal.SIGTERM  # it still ends as SIGTERM ends it
    finally:
        proc.kill()
        proc.stdout.close()
    assert os.listdir(tmp_path) == ["model_final.pth"]
    assert target.read_bytes() == b"previous"
