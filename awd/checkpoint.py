"""Checkpoint files: plain data written atomically, read without running any code.

A checkpoint is read with ``torch.load(weights_only=True)``, which refuses anything but tensors
and plain containers: a crafted file cannot execute code on load. So everything a trainer saves
is stored as tensors, dicts, lists, str, int, float, bool or None (the RNG states included,
see `encode_rng`), and every read is checked, field by field, before any of it is applied:
a file that cannot be resumed raises `CheckpointError` with one line and leaves the trainer as
it was, so a caller (a search trial) can start afresh instead.
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from awd.errors import CheckpointError, first_line
from awd.files import atomic_torch_save

TRAINER_FORMAT = "awdsearch.trainer/2"
EXPORT_FORMAT = "awdsearch.model/1"
_NOT_OURS = ("it is not a checkpoint of this awdsearch version (written by an older version, "
             "or not an awdsearch checkpoint)")


def write(state: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write ``state`` to ``path`` atomically: the previous file stays valid until the rename."""
    try:
        atomic_torch_save(state, path)
    except OSError as e:
        raise CheckpointError(f"cannot write {path}: {e.strerror or first_line(e)}") from None


def read(path: str | os.PathLike[str], fmt: str) -> dict[str, Any]:
    """The dict saved in ``path`` with format tag ``fmt``; anything else is a `CheckpointError`
    saying why (the caller says which file and what it was doing).

    ``weights_only=True``: an old checkpoint (pickled NumPy arrays) or a crafted pickle is
    refused by the loader itself, before any of its code could run."""
    try:
        with warnings.catch_warnings():  # torch's notes on foreign pickles: we say it in one line
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError("no such file") from None
    except OSError as e:
        raise CheckpointError(f"cannot read it: {e.strerror or first_line(e)}") from None
    except Exception as e:  # truncated zip, bad pickle, refused global: all unreadable
        text = str(e)
        if "Unsupported global" in text:  # NumPy arrays (before format 2) or a crafted object
            raise CheckpointError(f"{_NOT_OURS}; it holds objects a safe load refuses") from None
        # torch's own first line would advise loading unsafely: only its type is shown
        detail = ": " + first_line(e) if "Weights only load failed" not in text else ""
        raise CheckpointError(f"not a readable checkpoint (empty, truncated or corrupt: "
                              f"{type(e).__name__}{detail})") from None
    if not isinstance(state, dict) or state.get("format") != fmt:
        raise CheckpointError(_NOT_OURS)
    return state


# --- checks ----------------------------------------------------------------------------------


def field(state: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    """``state[key]``, which must be an instance of ``kind``."""
    if key not in state:
        raise CheckpointError(f"the checkpoint has no {key!r}")
    value = state[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise CheckpointError(f"the checkpoint's {key!r} has the wrong type "
                              f"({type(value).__name__})")
    return value


def check_tensors(saved: Any, like: Mapping[str, torch.Tensor], what: str) -> None:
    """``saved`` has the same keys as ``like`` and a tensor of the same shape and dtype under
    each."""
    if not isinstance(saved, dict) or saved.keys() != like.keys():
        raise CheckpointError(f"the checkpoint's {what} do not fit this model (other names)")
    for k, t in like.items():
        v = saved[k]
        if not isinstance(v, torch.Tensor) or v.shape != t.shape or v.dtype != t.dtype:
            raise CheckpointError(f"the checkpoint's {what} do not fit this model ({k})")


def check_tensor_list(saved: Any, like: list[torch.Tensor], what: str) -> None:
    """``saved`` is a list of tensors with the shapes of ``like``."""
    if not isinstance(saved, list) or len(saved) != len(like) or any(
            not isinstance(s, torch.Tensor) or s.shape != t.shape
            for s, t in zip(saved, like, strict=False)):
        raise CheckpointError(f"the checkpoint's {what} do not fit this model")


def check_floats(values: Any, what: str) -> list[float]:
    if not isinstance(values, list) or not all(isinstance(v, float | int) for v in values):
        raise CheckpointError(f"the checkpoint's {what} is not a list of numbers")
    return [float(v) for v in values]


# --- RNG states as plain data ----------------------------------------------------------------


def encode_rng(window: np.random.Generator) -> dict[str, Any]:
    """Every random stream of a run (torch, NumPy's and Python's global ones, the window-length
    generator, CUDA's) as tensors and plain values."""
    legacy = np.random.get_state(legacy=True)
    assert isinstance(legacy, tuple)  # legacy=True: MT19937's (kind, key, pos, gauss...) tuple
    kind, key, pos, has_gauss, cached = legacy
    version, internal, gauss_next = random.getstate()
    rng: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
        "window": window.bit_generator.state,
    }
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


class DecodedRng:
    """RNG states checked by decoding each into a throwaway generator; `apply` cannot fail."""

    def __init__(self, rng: Any) -> None:
        try:
            self.torch = rng["torch"]
            torch.Generator().set_state(self.torch)
            n = rng["numpy"]
            self.numpy = (str(n["kind"]), n["key"].numpy().astype(np.uint32), int(n["pos"]),
                          int(n["has_gauss"]), float(n["cached_gaussian"]))
            np.random.RandomState().set_state(self.numpy)
            p = rng["python"]
            self.python = (int(p["version"]), tuple(int(v) for v in p["internal"]),
                           p["gauss_next"])
            random.Random().setstate(self.python)
            self.window = rng["window"]
            np.random.PCG64().state = self.window
            self.cuda = rng.get("cuda") or []
            if not all(isinstance(t, torch.Tensor) for t in self.cuda):
                raise TypeError("cuda states are not tensors")
        except Exception as e:  # any malformed entry: wrong type, size or key
            raise CheckpointError(f"the checkpoint's random states are malformed "
                                  f"({first_line(e)})") from None

    def apply(self, window: np.random.Generator) -> None:
        torch.set_rng_state(self.torch)
        np.random.set_state(self.numpy)
        random.setstate(self.python)
        window.bit_generator.state = self.window
        if torch.cuda.is_available():  # as many devices as both machines have
            for i, state in enumerate(self.cuda[:torch.cuda.device_count()]):
                torch.cuda.set_rng_state(state, i)
