r"""Bits per dimension of quantised data (8-bit images), with the data-scaling offset made explicit.

Data are integers :math:`n \in \{0, \dots, \mathrm{bins}-1\}^D` shown to the model as
:math:`x = lo + (hi - lo)\,(n + u)/\mathrm{bins}` with :math:`u \in [0, 1)^D` (dequantisation; Theis et al. 2016,
Ho et al. 2019).  Then
:math:`\log P(n) \ge E_{q(u\mid n)}[\log p(x) - \log q(u \mid n)] - D\log(\mathrm{bins}/(hi - lo))`, so

.. math::

    \mathrm{bpd} = \frac{-\log p(x) + \log q(u\mid n)}{D \ln 2} + \log_2\frac{\mathrm{bins}}{hi - lo},

an upper bound on the bits per dimension of the discrete data (in expectation over :math:`u`).  The
offset is 8 bits for 256 bins on ``[0, 1]`` and 7 on ``[-1, 1]`` (score_sde adds it as a bare constant).
Uniform dequantisation has :math:`\log q = 0`.
"""

import math
import numbers
from typing import Callable, Optional, Sequence, Union

import torch

from .._errors import ArgumentTypeError, InvalidParameterError, ShapeError
from ._loglik import check_data, check_flow, generator_from, log_likelihood
from ._result import LN2, BitsPerDim

__all__ = ["bits_per_dim", "dequantize_uniform", "data_offset"]


def _range(data_range):
    try:
        lo, hi = (float(v) for v in data_range)
    except (TypeError, ValueError):
        raise ArgumentTypeError(f"data_range must be a pair (lo, hi) such as (0, 1) or (-1, 1), got {data_range!r}") \
            from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise InvalidParameterError(f"data_range must satisfy lo < hi (finite), got {data_range!r}")
    return lo, hi


def data_offset(data_range: Sequence[float], bins: int = 256) -> float:
    r"""The bits/dim offset :math:`\log_2(\mathrm{bins}/(hi - lo))` of data scaled to ``data_range``."""
    lo, hi = _range(data_range)
    return math.log2(bins / (hi - lo))


def dequantize_uniform(n: torch.Tensor, generator: Optional[torch.Generator] = None):
    r"""Uniform dequantisation: :math:`u \sim U[0, 1)^D` shaped like ``n``, and :math:`\log q(u\mid n) = 0`.

    The noise is drawn on the generator's device (the CPU by default) and moved, so a seed gives the
    same noise on every device.
    """
    dev = generator.device if generator is not None else n.device
    u = torch.rand(n.shape, generator=generator, device=dev, dtype=n.dtype).to(n.device)
    return u, n.new_zeros(n.shape[0])


def _bins(x, lo, hi, bins, dtype):
    """The levels ``n`` (float, in ``dtype``) of integer data or of floats on the grid ``lo + (hi-lo) n/(bins-1)``."""
    if not x.is_floating_point():
        if x.dtype == torch.bool or x.is_complex():
            raise ArgumentTypeError(f"quantised data must be an integer or floating tensor, got {x.dtype}")
        if bool((x < 0).any()) or bool((x > bins - 1).any()):
            raise InvalidParameterError(f"integer data must lie in [0, {bins - 1}] for bins={bins}, got values in "
                                        f"[{int(x.min())}, {int(x.max())}]")
        return x.to(dtype)
    n = ((x - lo) / (hi - lo) * (bins - 1)).round()
    grid = lo + (hi - lo) * n / (bins - 1)
    if bool(((x - grid).abs() > 1e-3 * (hi - lo) / (bins - 1)).any()):
        raise InvalidParameterError(f"x is not on the {bins}-level grid lo + (hi - lo) n / {bins - 1} of data_range; "
                                    "pass the integer data, or dequantize=None for data already continuous")
    return n


def bits_per_dim(flow, x: torch.Tensor, *, data_range: Sequence[float], bins: int = 256,
                 dequantize: Union[str, Callable, None] = None, generator: Optional[torch.Generator] = None,
                 seed: Optional[int] = None, dtype: Optional[torch.dtype] = None, **likelihood_options) -> BitsPerDim:
    r"""Bits per dimension of quantised data under the probability-flow model, the offset explicit.

    .. math::

        x = lo + (hi - lo)\frac{n + u}{\mathrm{bins}}, \qquad
        \mathrm{bpd} = \frac{-\log p(x) + \log q(u\mid n)}{D\ln 2} + \log_2\frac{\mathrm{bins}}{hi - lo}.

    **Arguments**

    - ``flow``: ``sdekit.probability_flow(sde, score_fn)``, a model of data scaled to ``data_range``.
    - ``x``: the data, one of
      - an integer tensor of levels ``n`` in ``[0, bins - 1]`` (a uint8 image): needs ``dequantize``;
      - floats on the grid ``lo + (hi - lo) n / (bins - 1)`` (``ToTensor()`` images, rescaled) with
        ``dequantize``: their levels ``n`` are recovered and dequantised;
      - floats in ``[lo, hi]`` with ``dequantize=None``: data already continuous (dequantised by the caller).
    - ``data_range``: ``(lo, hi)`` the model sees, e.g. ``(0, 1)`` or ``(-1, 1)``: it sets the offset
      :math:`\log_2(\mathrm{bins}/(hi-lo))` (8 or 7 bits for 256 bins).
    - ``bins``: quantisation levels (256 for 8-bit data).
    - ``dequantize``: ``"uniform"`` (:math:`u \sim U[0,1)^D`, :math:`\log q = 0`), a variational dequantiser
      ``q(n, generator) -> (u, log_q)`` with ``u`` in ``[0, 1)`` shaped like ``n`` and ``log_q`` of shape
      ``(batch,)`` (Ho et al. 2019), or ``None`` (continuous data).
    - ``generator``, ``seed``: the dequantisation noise and then the Hutchinson probes come from it.
    - ``dtype``: the model's dtype for integer data (default torch's default dtype).
    - other keywords go to :func:`sdekit.log_likelihood` (``method``, ``rtol``, ``atol``, ``divergence``,
      ``probes``, ...).

    Returns a :class:`BitsPerDim` (``bpd`` per sample, ``offset``, ``log_q``, the model input ``x``, its
    ``likelihood``).
    """
    check_flow(flow)
    check_data(x, quantised=True)
    if isinstance(bins, bool) or not isinstance(bins, numbers.Integral) or bins < 2:
        raise InvalidParameterError(f"bins must be an integer >= 2 (256 for 8-bit data), got {bins!r}")
    lo, hi = _range(data_range)
    offset = data_offset((lo, hi), bins)
    gen = generator_from(generator, seed)
    if x.is_floating_point() and (bool((x < lo).any()) or bool((x > hi).any())):
        raise InvalidParameterError(f"x lies outside data_range=({lo:g}, {hi:g}) (values in "
                                    f"[{float(x.min()):.4g}, {float(x.max()):.4g}]); rescale the data or "
                                    "declare the range the model was trained on")
    if dequantize is None:
        if not x.is_floating_point():
            raise ArgumentTypeError(f"x is an integer tensor ({x.dtype}) of quantised data: choose a dequantisation, "
                                    "dequantize='uniform' or a variational dequantiser q(n, generator) -> (u, log_q)")
        model_x, log_q = x, x.new_zeros(x.shape[0])
    else:
        if not x.is_floating_point() and dtype is not None and not dtype.is_floating_point:
            raise ArgumentTypeError(f"dtype must be a floating-point dtype, got {dtype}")
        fdtype = x.dtype if x.is_floating_point() else (dtype or torch.get_default_dtype())
        n = _bins(x, lo, hi, bins, fdtype)
        u, log_q = _dequantize(dequantize, n, gen)
        model_x = lo + (hi - lo) * (n + u) / bins
    lik = log_likelihood(flow, model_x, generator=gen, **likelihood_options)
    bpd = (-lik.log_likelihood + log_q) / (lik.dim * LN2) + offset
    return BitsPerDim(bpd=bpd, offset=offset, log_q=log_q, x=model_x, likelihood=lik)


def _dequantize(dequantize, n, gen):
    if isinstance(dequantize, str):
        if dequantize.lower() != "uniform":
            raise InvalidParameterError(f"unknown dequantize {dequantize!r}; use 'uniform', a variational "
                                        "dequantiser q(n, generator) -> (u, log_q), or None for continuous data")
        return dequantize_uniform(n, gen)
    if not callable(dequantize):
        raise ArgumentTypeError(f"dequantize must be 'uniform', a callable q(n, generator) -> (u, log_q) or None, "
                                f"got {type(dequantize).__name__}")
    out = dequantize(n, gen)
    if not (isinstance(out, tuple) and len(out) == 2 and all(isinstance(v, torch.Tensor) for v in out)):
        raise ArgumentTypeError("a variational dequantiser must return a pair of tensors (u, log_q)")
    u, log_q = out
    if u.shape != n.shape or log_q.shape != (n.shape[0],):
        raise ShapeError(f"a dequantiser must return u shaped like n {tuple(n.shape)} and log_q of shape "
                         f"({n.shape[0]},), got {tuple(u.shape)} and {tuple(log_q.shape)}")
    if bool((u < 0).any()) or bool((u > 1).any()):
        raise InvalidParameterError("a dequantiser's u must lie in [0, 1) (the offset within each bin)")
    return u.to(n.dtype), log_q.to(n.dtype)
