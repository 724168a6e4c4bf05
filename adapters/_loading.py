"""Checkpoints loaded without running code: safetensors, or ``torch.load(..., weights_only=True)``.

A pickle names the functions to call when it is read, so a checkpoint from elsewhere can run anything.
``torch.load(weights_only=True)`` builds only tensors, containers and primitive types and refuses every
other global; sdekit turns that refusal into :class:`UnsafeCheckpointError` and never retries unsafely.
"""

import os
import pickle
import re
import struct
import zipfile

import torch

from sdekit import ArgumentTypeError, InvalidParameterError, SDEKitError

__all__ = ["UnsafeCheckpointError", "load_checkpoint", "load_weights", "corrupt_checkpoint"]


class UnsafeCheckpointError(SDEKitError, ValueError):
    """A checkpoint holds objects whose unpickling could run code; it was not executed."""


#: torch.load's RuntimeErrors that are about a damaged file (truncated zip, short read) rather than the caller.
_DAMAGED = re.compile(r"PytorchStreamReader|EOF|corrupt|truncat|zip archive|central directory|invalid header",
                      re.IGNORECASE)


def load_checkpoint(path, map_location="cpu") -> dict:
    """The tensors of the checkpoint at ``path``: a ``.safetensors`` file, or a weights-only torch pickle.

    Raises :class:`UnsafeCheckpointError` for a pickle that would build anything but tensors and plain
    containers (a pickled model class, or code), and :class:`sdekit.InvalidParameterError` for a file that is
    truncated (a half-written save, a partial download) or is not a checkpoint at all.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ArgumentTypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InvalidParameterError(f"no checkpoint file at {path!r}; check the path")
    if path.endswith(".safetensors"):
        try:
            from safetensors import SafetensorError
            from safetensors.torch import load_file
        except ImportError:     # pragma: no cover - part of the diffusers extra
            raise InvalidParameterError("reading .safetensors needs the safetensors package: "
                                        "pip install 'sdekit[diffusers]' (or pip install safetensors)")
        try:
            return load_file(path, device=str(map_location))
        except SafetensorError as err:
            raise corrupt_checkpoint(path, err) from None
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if found is None and "Weights only load failed" not in str(err):
            raise corrupt_checkpoint(path, err) from None      # a damaged pickle stream, not a refused global
        detail = f"it names {found.group(1)}" if found else "it is not a weights-only pickle"
        raise UnsafeCheckpointError(
            f"{path} was refused: unpickling it would build objects other than tensors ({detail}); "
            f"it was not executed.  If you trust it, re-save its state_dict (torch.save(model.state_dict())) "
            f"or convert it to safetensors") from None
    except PermissionError:
        raise InvalidParameterError(f"cannot read {path}: permission denied; check the file's permissions") from None
    except RuntimeError as err:
        if not _DAMAGED.search(str(err)):
            raise                       # not about the file's bytes (e.g. a CUDA map_location without CUDA)
        raise corrupt_checkpoint(path, err) from None
    except (OSError, EOFError, KeyError, IndexError, ValueError, zipfile.BadZipFile, struct.error) as err:
        # a zip cut short, a pickle stream that ends early or holds garbage: torch reports each differently
        raise corrupt_checkpoint(path, err) from None


def corrupt_checkpoint(path, err) -> InvalidParameterError:
    """The one-line error for a checkpoint file that cannot be read: truncated, garbled, or not a checkpoint."""
    detail = " ".join(str(err).split())[:160] or "unexpected end of file"
    size = os.path.getsize(path) if os.path.isfile(path) else 0
    return InvalidParameterError(
        f"{path} ({size} bytes) is not a readable checkpoint: it is truncated or corrupted "
        f"({type(err).__name__}: {detail}); download or save it again (a half-written file cannot be loaded)")


def load_weights(module: torch.nn.Module, path, strict: bool = True, key=None) -> torch.nn.Module:
    """Load the checkpoint at ``path`` into ``module`` (``key`` picks a nested state dict, e.g. ``"ema"``)."""
    state = load_checkpoint(path)
    if key is not None:
        if not isinstance(state, dict) or key not in state:
            raise InvalidParameterError(f"the checkpoint has no entry {key!r}; its keys: {sorted(state)[:10]}")
        state = state[key]
    if not isinstance(state, dict):
        raise InvalidParameterError(f"the checkpoint holds a {type(state).__name__}, not a state dict")
    try:
        module.load_state_dict(state, strict=strict)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:300]
        raise InvalidParameterError(f"{path} does not fit the {type(module).__name__}: {detail}; build the module "
                                    f"with the checkpoint's architecture (or pass strict=False to skip missing and "
                                    f"unexpected keys)") from None
    return module
