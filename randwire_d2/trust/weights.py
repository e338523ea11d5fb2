"""Weights files as data: `.pth`/`.pyth` by `torch.load(weights_only=True)` after the declared
storage sizes are checked against the file's bytes; `.pkl` by an unpickler that builds only
dicts, lists, strings, numbers and numeric numpy arrays, each shape checked against its bytes
before allocation. Every tensor must fit its storage (no huge zero-stride views)."""

import collections
import io
import math
import pickle
import struct
import zipfile
from typing import Any, Dict

import numpy as np
import torch

from .files import open_regular

__all__ = ["CheckpointError", "read_checkpoint", "read_pickled_weights"]
__all__ += ["check_structure", "check_tensors"]

# numpy kinds a weights array may have: bool, signed and unsigned ints, floats, complex.
NUMERIC_KINDS = "biufc"
MAX_NDIM = 32
# torch.load's legacy (non-zip) format names each storage by its class: its element size.
_LEGACY_STORAGE_BYTES = {
    "DoubleStorage": 8, "FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2,
    "LongStorage": 8, "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1,
    "BoolStorage": 1, "ComplexFloatStorage": 8, "ComplexDoubleStorage": 16,
}  # fmt: skip


class CheckpointError(ValueError):
    """A checkpoint that cannot be what the user meant: unreadable, of another model, non-finite,
    or one that would run code or allocate beyond its bytes."""


def read_checkpoint(path: str, what: str = "MODEL.WEIGHTS") -> dict:
    """A `.pth` checkpoint as a dict, checked as the module says; errors name `what`, the file."""
    with open_regular(path, what, "weights") as f:
        size = f.seek(0, io.SEEK_END)
        f.seek(0)
        try:
            zipped = zipfile.is_zipfile(f)
            f.seek(0)
            _check_zip(f, size) if zipped else _check_legacy(f, size)
            f.seek(0)
            data = torch.load(f, map_location="cpu", weights_only=True)
        except CheckpointError as e:
            raise CheckpointError(f"{what}={path!r} {e}") from None
        except Exception as e:
            text = str(e).splitlines()[0] if str(e) else ""
            raise CheckpointError(
                f"{what}={path!r} is not a readable checkpoint ({size} bytes): "
                f"{type(e).__name__}: {text}"
            ) from e
    return _checked_dict(data, f"{what}={path!r}", check_tensors)


def _check_zip(f, size: int) -> None:
    """torch.save's zip format stores records uncompressed: a compressed record could expand
    past the file's size."""
    with zipfile.ZipFile(f) as z:
        for info in z.infolist():
            if info.compress_type != zipfile.ZIP_STORED or info.file_size > size:
                raise CheckpointError(
                    f"holds a compressed or oversized record {info.filename!r} "
                    f"({info.file_size} bytes declared): torch.save never writes one"
                )


class _Dummy:
    """Every global of a legacy checkpoint in the size pre-pass: nothing is imported or called."""

    def __init__(self, name: str = "", *args, **kwargs):
        self.name = name

    def __call__(self, *args, **kwargs):
        return _Dummy()

    def __setstate__(self, state):
        pass


class _SizeScan(pickle.Unpickler):
    """Sums the storage bytes a legacy checkpoint's pickle declares, building nothing."""

    declared = 0

    def find_class(self, module, name):
        return _Dummy(name)

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise CheckpointError(f"declares a storage {pid!r:.80} of an unknown form")
        kind, numel = getattr(pid[1], "name", None), pid[4]
        if kind not in _LEGACY_STORAGE_BYTES or not isinstance(numel, int) or numel < 0:
            raise CheckpointError(f"declares a storage of type {kind!r} with {numel!r} elements")
        self.declared += numel * _LEGACY_STORAGE_BYTES[kind]
        return _Dummy()


def _check_legacy(f, size: int) -> None:
    """The legacy format (torch < 1.6: pycls' `.pyth`) allocates each storage at the size its
    pickle declares before reading it: the declared bytes must fit in the file."""
    try:
        for _ in range(3):  # magic number, protocol version, system info
            _SizeScan(f).load()
        scan = _SizeScan(f)
        scan.load()
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(
            f"is not a readable checkpoint ({size} bytes): {type(e).__name__}: {e}"
        ) from None
    if scan.declared > size:
        raise CheckpointError(
            f"declares {scan.declared} bytes of storages in a file of {size} bytes: refusing to "
            "allocate them"
        )


# Most values a weights file may hold once its shared references are expanded (a checkpoint with
# optimizer state holds ~10^4; pickle's memo lets 100 bytes reference a list 10^15 times).
MAX_EXPANDED_VALUES = 10_000_000


def check_structure(data: Any) -> None:
    """`data` holds no cycle and at most MAX_EXPANDED_VALUES values counted as code walking it
    would meet them (shared containers once per reference), so no later walk explodes."""
    sizes, state, stack = {}, {}, [data]
    while stack:
        x = stack[-1]
        children = _children(x)
        if state.get(id(x)) is None:
            state[id(x)] = "open"
            pending = [c for c in children if state.get(id(c)) != "done"]
            if any(state.get(id(c)) == "open" for c in pending):
                raise CheckpointError("holds a container that contains itself")
            stack.extend(pending)
            continue
        stack.pop()
        if state[id(x)] == "done":
            continue
        sizes[id(x)] = 1 + sum(sizes[id(c)] for c in children)
        state[id(x)] = "done"
        if sizes[id(x)] > MAX_EXPANDED_VALUES:
            raise CheckpointError(
                f"expands to more than {MAX_EXPANDED_VALUES} values through shared references: "
                "not a checkpoint"
            )


def _children(x) -> list:
    if isinstance(x, dict):
        return [v for kv in x.items() for v in kv]
    if isinstance(x, (list, tuple)):
        return list(x)
    return []


def check_tensors(data: Any) -> None:
    """`data` passes `check_structure`, and every tensor in it is a dense CPU tensor with no more
    elements than its storage holds."""
    check_structure(data)
    for key, t in _tensors(data, ""):
        if t.layout != torch.strided or t.device.type != "cpu":
            raise CheckpointError(
                f"{key} is a {t.layout} tensor on {t.device}: weights are dense CPU tensors"
            )
        capacity = t.untyped_storage().nbytes() // max(t.element_size(), 1)
        if t.numel() > capacity:
            raise CheckpointError(
                f"{key} declares shape {tuple(t.shape)} ({t.numel()} elements) over a storage of "
                f"{capacity} elements (strides {t.stride()}): not a weights tensor"
            )


def _tensors(data: Any, where: str, seen=None):
    seen = set() if seen is None else seen
    stack = [(where, data)]
    while stack:
        where, x = stack.pop()
        if id(x) in seen:
            continue
        seen.add(id(x))
        if torch.is_tensor(x):
            yield where or "the file", x
        elif isinstance(x, dict):
            stack.extend((f"{where}.{k}" if where else str(k), v) for k, v in x.items())
        elif isinstance(x, (list, tuple)):
            stack.extend((f"{where}[{i}]", v) for i, v in enumerate(x))


# ---- .pkl -------------------------------------------------------------------------------------


class _ForbiddenType(pickle.UnpicklingError):
    pass


class _NdarrayType:
    """`numpy.ndarray` as unpickled: a marker only (the real class allocates any shape)."""

    def __new__(cls, *args, **kwargs):
        raise _Refused("a call of numpy.ndarray (it allocates whatever shape it is given)")


class _DtypeState:
    """A numpy dtype named in the pickle, checked to be plain numeric before it is used."""

    def __init__(self, spec, align=False, copy=False):
        if not isinstance(spec, str):
            raise _Refused(f"a dtype spelled {spec!r:.40}")
        try:
            self.dtype = np.dtype(spec)
        except TypeError:
            raise _Refused(f"the dtype {spec!r:.40}") from None
        self._check()

    def __setstate__(self, state):
        # (version, byte order, subarray, names, fields, element size, alignment, flags)
        if not isinstance(state, tuple) or len(state) < 5 or any(s is not None for s in state[2:5]):
            raise _Refused(f"a structured or subarray dtype ({state!r:.60})")
        if state[1] in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(state[1])
        self._check()

    def _check(self):
        d = self.dtype
        if d.kind not in NUMERIC_KINDS or d.fields is not None or d.subdtype is not None:
            raise _Refused(f"the dtype {d.str!r} (weights are numeric arrays)")


class _ArrayState:
    """An array built in __setstate__ from the file's bytes once its shape matches them."""

    array = None

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 5):
            raise _Refused(f"an array state of {type(state).__name__}")
        _, shape, dtype, fortran, raw = state
        if not isinstance(dtype, _DtypeState):
            raise _Refused("an array without a checked dtype")
        if not (
            isinstance(shape, tuple)
            and len(shape) <= MAX_NDIM
            and all(type(n) is int and n >= 0 for n in shape)
        ):
            raise _Refused(f"an array of shape {shape!r:.60}")
        raw = raw.encode("latin1") if isinstance(raw, str) else raw
        if not isinstance(raw, bytes):
            raise _Refused(f"array data of type {type(raw).__name__}")
        declared = math.prod(shape) * dtype.dtype.itemsize
        if declared != len(raw):
            raise _Refused(f"an array of shape {shape} {dtype.dtype} ({declared} bytes) over {len(raw)} bytes of data")  # fmt: skip
        order = "F" if fortran else "C"
        self.array = np.frombuffer(raw, dtype.dtype).reshape(shape, order=order).copy(order)


class _Refused(pickle.UnpicklingError):
    pass


def _reconstruct(subtype, shape, code):
    if subtype is not _NdarrayType:
        raise _Refused("an array of a type other than numpy.ndarray")
    return _ArrayState()


def _scalar(dtype, raw=None):
    if not isinstance(dtype, _DtypeState):
        raise _Refused("a scalar without a checked dtype")
    raw = raw.encode("latin1") if isinstance(raw, str) else raw
    if not isinstance(raw, bytes) or len(raw) != dtype.dtype.itemsize:
        raise _Refused(f"a {dtype.dtype} scalar over {len(raw or b'')} bytes")
    return np.frombuffer(raw, dtype.dtype)[0]


def _encode(text, encoding="utf-8"):
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise _Refused(f"_codecs.encode with {encoding!r}")
    return text.encode("latin1")


# What a weights .pkl may name, and what each name unpickles to. Anything else would be a call
# into arbitrary code while unpickling.
_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # written by numpy >= 2
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("numpy", "ndarray"): _NdarrayType,
    ("numpy", "dtype"): _DtypeState,
    ("_codecs", "encode"): _encode,  # how protocol 2 spells bytes
    ("collections", "OrderedDict"): collections.OrderedDict,
}


class _WeightsUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _PICKLE_ALLOWED:
            return _PICKLE_ALLOWED[(module, name)]
        raise _ForbiddenType(f"{module}.{name}")

    def persistent_load(self, pid):
        raise _Refused(f"a persistent id {pid!r:.40}")


def _finish(x, memo):
    """`x` with every unpickled array state replaced by its array; other values must be plain."""
    if id(x) in memo:
        return memo[id(x)]
    if isinstance(x, _ArrayState):
        if x.array is None:
            raise _Refused("an array without data")
        out = x.array
    elif isinstance(x, _DtypeState):
        out = x.dtype
    elif isinstance(x, dict):
        out = type(x)()
        memo[id(x)] = out
        for k, v in x.items():
            out[_finish(k, memo)] = _finish(v, memo)
    elif isinstance(x, list):
        out = []
        memo[id(x)] = out
        out.extend(_finish(v, memo) for v in x)
    elif isinstance(x, tuple):
        out = tuple(_finish(v, memo) for v in x)
    elif x is None or isinstance(x, (bool, int, float, complex, str, bytes, np.generic)):
        out = x
    else:
        raise _Refused(f"a value of type {type(x).__name__}")
    memo[id(x)] = out
    return out


def read_pickled_weights(path: str, what: str = "MODEL.WEIGHTS") -> Dict:
    """A `.pkl` weights file read without running code or allocating beyond its bytes; anything
    but plain data is refused, naming the file and what it asked for."""
    with open_regular(path, what, "weights") as f:
        try:
            data = _finish(_WeightsUnpickler(f, encoding="latin1").load(), {})
        except _ForbiddenType as e:
            raise CheckpointError(
                f"{what}={path!r} is a pickle that asks for {e}, which weights never need: "
                "refusing to load it (unpickling it could run code). A .pkl weights file holds "
                "only dicts of numpy arrays; give such a file or a .pth checkpoint"
            ) from None
        except _Refused as e:
            raise CheckpointError(
                f"{what}={path!r} holds {e}: a .pkl weights file holds only dicts of numeric "
                "numpy arrays; refusing to load it"
            ) from None
        except RecursionError:
            raise CheckpointError(f"{what}={path!r} is nested too deeply for weights") from None
        except Exception as e:
            raise CheckpointError(
                f"{what}={path!r} is not a readable .pkl weights file: {type(e).__name__}: {e}"
            ) from e
    return _checked_dict(data, f"{what}={path!r}", check_structure)


def _checked_dict(data, name: str, check) -> Dict:
    """`data` when it is a dict that passes `check`; else CheckpointError naming the file."""
    if not isinstance(data, dict):
        raise CheckpointError(f"{name} holds a {type(data).__name__}, not a dict")
    try:
        check(data)
    except CheckpointError as e:
        raise CheckpointError(f"{name} {e}") from None
    return data
