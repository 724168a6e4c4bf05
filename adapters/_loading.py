"""Checkpoints loaded without running code: safetensors, or ``torch.load(..., weights_only=True)``.

A pickle names the functions to call when it is read, so a checkpoint from elsewhere can run anything.
``torch.load(weights_only=True)`` builds only tensors, containers and primitive types and refuses every
other global; sdekit turns that refusal into :class:`UnsafeCheckpointError` and never retries unsafely.
"""

import os
import pickle
import re

import torch

from sdekit import ArgumentTypeError, InvalidParameterError, SDEKitError

__all__ = ["UnsafeCheckpointError", "load_checkpoint", "load_weights"]


class UnsafeCheckpointError(SDEKitError, ValueError):
    """A checkpoint holds objects whose unpickling could run code; it was not executed."""


def load_checkpoint(path, map_location="cpu") -> dict:
    """The tensors of the checkpoint at ``path``: a ``.safetensors`` file, or a weights-only torch pickle.

    Raises :class:`UnsafeCheckpointError` for a pickle that would build anything but tensors and plain
    containers (a pickled model class, or code).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ArgumentTypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InvalidParameterError(f"no checkpoint file at {path!r}; check the path")
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError:     # pragma: no cover - part of the diffusers extra
            raise InvalidParameterError("reading .safetensors needs the safetensors package: "
                                        "pip install 'sdekit[diffusers]' (or pip install safetensors)")
        return load_file(path, device=str(map_location))
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        detail = f"it names {found.group(1)}" if found else "it is not a weights-only pickle"
        raise UnsafeCheckpointError(
            f"{path} was refused: unpickling it would build objects other than tensors ({detail}); "
            f"it was not executed.  If you trust it, re-save its state_dict (torch.save(model.state_dict())) "
            f"or convert it to safetensors") from None


def load_weights(module: torch.nn.Module, path, strict: bool = True, key=None) -> torch.nn.Module:
    """Load the checkpoint at ``path`` into ``module`` (``key`` picks a nested state dict, e.g. ``"ema"``)."""
    state = load_checkpoint(path)
    if key is not None:
        if not isinstance(state, dict) or key not in state:
            raise InvalidParameterError(f"the checkpoint has no entry {key!r}; its keys: {sorted(state)[:10]}")
        state = state[key]
    if not isinstance(state, dict):
        raise InvalidParameterError(f"the checkpoint holds a {type(state).__name__}, not a state dict")
    module.load_state_dict(state, strict=strict)
    return module
