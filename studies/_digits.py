r"""scikit-learn's handwritten digits as data of a score model: the splits, the model space, the dequantisation.

``sklearn.datasets.load_digits`` holds 1,797 images of 8×8 pixels with grey levels :math:`n \in \{0, \dots, 16\}`
and their classes 0–9 (it ships with scikit-learn: nothing is downloaded).

- **Splits.** The test split is every fifth image (index % 5 == 0, 360 images), the training split the rest
  (1,437).  Nothing is trained or tuned on the test split.
- **Model space.** A level :math:`n` is the number :math:`x = n/8 - 1`, so images lie in :math:`[-1, 1]`,
  shaped ``(1, 8, 8)``.
- **Dequantisation.** The levels are discrete; a density model is trained and scored on
  :math:`x = (n + u - \tfrac12)/8 - 1` with :math:`u \sim U[0, 1)^{64}`: each level becomes the cell of width
  :math:`1/8` centred on it.  In the terms of :func:`sdekit.bits_per_dim` these are the integer levels with
  ``bins=17`` and ``data_range=(-17/16, 17/16)`` (:data:`DATA_RANGE`), whose offset is
  :math:`\log_2(17/(17/8)) = 3` bits per dimension: a density :math:`p` on the cells gives
  :math:`\mathrm{bpd} = -\mathbb E_u \log p(x) / (64 \ln 2) + 3`, an upper bound on the bits per pixel of the
  discrete images.  Seventeen levels make the cells wide (an eighth of the unit): a network trained on the bare
  levels puts its mass in spikes of width :math:`\sigma(\epsilon)` (0.01 for VP) and a uniform dequantisation
  would then score the emptiness between the spikes, not the model, so the network is trained on dequantised
  images (Theis et al. 2016; Ho et al. 2019 do the same for flows).
"""

from typing import NamedTuple

import torch

from sdekit import InvalidParameterError

__all__ = ["Digits", "digits", "BINS", "DATA_RANGE", "BPD_OFFSET", "EVENT_SHAPE", "DATA_SPACE", "to_levels",
           "dequantise", "digits_sampler"]

#: Grey levels of the digits (0 .. 16).
BINS = 17
#: The range whose 17 cells of width 1/8 are centred on the levels n/8 - 1: ``bits_per_dim(..., bins=17,
#: data_range=DATA_RANGE)`` of the integer levels.
DATA_RANGE = (-17 / 16, 17 / 16)
#: log2(bins / (hi - lo)): the bits per dimension a density on the model space adds for the cell width 1/8.
BPD_OFFSET = 3.0
#: One image.
EVENT_SHAPE = (1, 8, 8)
#: The data space recorded in a digits model's metadata.
DATA_SPACE = "x = n/8 - 1 for grey levels n = 0..16, trained dequantised: (n + u - 1/2)/8 - 1, u ~ U[0, 1)"


class Digits(NamedTuple):
    """The splits: ``train`` ``(1437, 1, 8, 8)`` and ``test`` ``(360, 1, 8, 8)`` in the model space
    (level / 8 - 1), their classes ``train_labels``, ``test_labels`` (int64), and the integer levels
    ``train_levels``, ``test_levels`` (int64, 0 .. 16)."""

    train: torch.Tensor
    test: torch.Tensor
    train_labels: torch.Tensor
    test_labels: torch.Tensor
    train_levels: torch.Tensor
    test_levels: torch.Tensor


_CACHE = {}


def digits(dtype=torch.float64) -> Digits:
    r"""scikit-learn's digits as :class:`Digits`: test = every fifth image (index % 5 == 0), train = the rest, in
    the model space :math:`x = n/8 - 1` (``dtype``, default float64) with the integer levels :math:`n`."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise InvalidParameterError("the digits come from scikit-learn: pip install 'sdekit[digits]' "
                                    "(or scikit-learn)") from None
    if "raw" not in _CACHE:
        data = load_digits()
        _CACHE["raw"] = (torch.as_tensor(data.images).round().to(torch.int64), torch.as_tensor(data.target))
    levels, labels = _CACHE["raw"]
    levels = levels.reshape(-1, *EVENT_SHAPE)
    test = torch.arange(levels.shape[0]) % 5 == 0
    x = levels.to(dtype) / 8 - 1
    # boolean indexing copies: the cached tensors are never handed out
    return Digits(x[~test], x[test], labels[~test], labels[test], levels[~test], levels[test])


def to_levels(x: torch.Tensor) -> torch.Tensor:
    """The nearest grey levels (int64, clamped to 0 .. 16) of images in the model space."""
    return ((x.to(torch.float64) + 1) * 8).round().clamp(0, BINS - 1).to(torch.int64)


def dequantise(levels: torch.Tensor, generator: torch.Generator = None, dtype=torch.float64) -> torch.Tensor:
    r"""Images of integer ``levels`` dequantised into the model space: :math:`(n + u - \tfrac12)/8 - 1`,
    :math:`u \sim U[0, 1)` drawn on ``generator``'s device and moved to that of ``levels``."""
    dev = generator.device if generator is not None else levels.device
    u = torch.rand(levels.shape, generator=generator, dtype=dtype, device=dev).to(levels.device)
    return (levels.to(dtype) + u - 0.5) / 8 - 1


def digits_sampler(levels: torch.Tensor):
    """``sample(n, generator)`` for :func:`sdekit.studies.train_score_model`: ``n`` images drawn with replacement
    from ``levels`` (integer levels), dequantised, in float64 on the generator's device."""
    def sample(n, generator):
        dev = generator.device
        idx = torch.randint(levels.shape[0], (n,), generator=generator, device=dev).cpu()
        return dequantise(levels[idx].to(dev), generator)
    return sample
