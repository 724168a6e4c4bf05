r"""Denoising score matching through the transition kernel of any :class:`sdekit.LinearSDE`."""

import math

import torch

from .._broadcast import per_sample, time_dtype
from .._errors import ArgumentTypeError, InvalidParameterError, ScoreFunctionError, ShapeError
from ._times import check_linear, coefficients, given_times, interval, sample_times, weighting_values

__all__ = ["score_matching_loss", "check_data"]

_REDUCE = ("mean", "sum", "none")


def check_data(x0, name="x0"):
    """``x0`` checked: a floating tensor ``(batch, *event_shape)`` with ``batch >= 1`` and finite entries."""
    if not isinstance(x0, torch.Tensor):
        raise ArgumentTypeError(f"{name} must be a torch.Tensor of shape (batch, *event_shape), "
                                f"got {type(x0).__name__}")
    if not x0.is_floating_point() or x0.is_complex():
        raise ShapeError(f"{name} must be a real floating tensor, got dtype {x0.dtype}; "
                         f"convert with .float() or .double()")
    if x0.dim() < 2 or x0.shape[0] < 1 or x0[0].numel() < 1:
        raise ShapeError(f"{name} must have shape (batch, *event_shape) with batch >= 1, got {tuple(x0.shape)}; "
                         f"for one sample use x0[None]")
    if not bool(torch.isfinite(x0).all()):
        raise InvalidParameterError(f"{name} has non-finite entries; pass finite data")
    return x0


def _is_adapter(model):
    return callable(getattr(model, "output", None)) and hasattr(model, "prediction") and hasattr(model, "sde")


def _model_residual(sde, model, x_t, t, noise, sigma64):
    r"""``(slope**2 * ||out - out*||**2)`` per sample: the squared score error in the model's natural form.

    Every parameterisation is affine in the network output with a per-sample scalar slope
    :math:`a = \partial s / \partial\,\mathrm{out}`; the target output ``out*`` is the one whose score is the
    kernel's, :math:`-\varepsilon/\sigma`.  Then :math:`\|s_\theta - \nabla\log p_{0t}\|^2 = a^2\|\mathrm{out} -
    \mathrm{out}^*\|^2`.
    """
    if _is_adapter(model):
        if repr(model.sde) != repr(sde):
            raise InvalidParameterError(f"the model was built for {model.sde!r} but the loss was given {sde!r}; "
                                        f"train with the SDE the model's coefficients come from")
        out, c = model.output(x_t, t)
        pred = model.prediction
        target = pred.output_of_score(-noise / c.sigma, x_t, c)
        shape = c.alpha.shape
        slope = pred.score(torch.ones(shape, dtype=x_t.dtype, device=x_t.device),
                           torch.zeros(shape, dtype=x_t.dtype, device=x_t.device), c)
        residual = out - target
        scale = slope.reshape(x_t.shape[0]) ** 2
    else:
        out = model(x_t, t)
        if not isinstance(out, torch.Tensor) or out.shape != x_t.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ScoreFunctionError(f"the model returned {got} for x of shape {tuple(x_t.shape)}; a score model "
                                     f"must return a tensor shaped like x (or wrap the network in "
                                     f"sdekit.adapters.Adapter with its prediction)")
        if not out.is_floating_point():
            raise ScoreFunctionError(f"the model returned a {out.dtype} tensor; a score model must return real "
                                     f"floating-point values (an integer or boolean output would be cast silently)")
        if out.device != x_t.device:
            raise ShapeError(f"the model returned a tensor on {out.device} for x on {x_t.device}; keep the model "
                             f"and the data on one device")
        residual = out + noise / per_sample(sigma64.to(x_t.dtype), x_t)
        scale = None
    sq = residual.pow(2).sum(dim=tuple(range(1, x_t.dim())))      # x0 has event dimensions: check_data
    if not bool(torch.isfinite(sq).all()):
        bad = (~torch.isfinite(sq)).nonzero()[0, 0]
        if bool(torch.isfinite(out[bad]).all()):        # finite output, infinite squared error: the data's scale
            big = float(torch.maximum(out[bad].detach().abs().max(), x_t[bad].abs().max()))
            raise InvalidParameterError(
                f"the squared error of the loss overflows {str(x_t.dtype)[6:]} at t = {float(t[bad]):.6g}: the "
                f"state and the model's output reach {big:.3g}; rescale the data (standardise it to about unit "
                f"scale) or train in float64")
        raise ScoreFunctionError(f"the model returned non-finite values at t = {float(t[bad]):.6g}; check the "
                                 f"network (and eps: scores grow like 1/sigma(t) near t = 0)")
    return sq if scale is None else scale * sq


def score_matching_loss(sde, model, x0, weighting="variance", t_sampler="uniform", reduce="mean", generator=None,
                        eps=None, t=None, noise=None, sigma_data=None):
    r"""Denoising score matching through the transition kernel of a linear SDE (Vincent 2011; Song et al. 2021).

    .. math::

        \mathcal L(\theta) = \mathbb E_{t \sim U[\epsilon, T]}\,\mathbb E_{x_0}\,\mathbb E_{\varepsilon}
        \Big[\lambda(t)\,\big\|s_\theta(x_t, t) - \nabla_{x_t}\log p_{0t}(x_t \mid x_0)\big\|^2\Big],
        \qquad x_t = \alpha_t x_0 + \sigma_t\varepsilon,\quad \nabla\log p_{0t} = -\varepsilon/\sigma_t,

    with :math:`\alpha_t`, :math:`\sigma_t` the SDE's own (``log_alpha``, ``sigma``; any :class:`sdekit.LinearSDE`
    that has them).  Its minimiser is the score of :math:`p_t`; at the exact score it equals the irreducible
    :math:`\mathbb E_t\,\lambda(t)\,(d/\sigma_t^2 - \mathbb E\|\nabla\log p_t\|^2)`.  Each sample's squared
    norm is summed over its event dimensions (DDPM's ``mse_loss`` is this divided by :math:`d`).

    **Arguments**

    - ``sde``: the :class:`sdekit.LinearSDE`.
    - ``model``: a score function ``model(x, t)``, or an :class:`sdekit.adapters.Adapter` (any prediction and
      time convention).  An adapter's loss is written in its natural form: with :math:`a = \partial s/\partial
      \mathrm{out}` the slope of its parameterisation, :math:`\lambda\,a^2\|\mathrm{out} - \mathrm{out}^*\|^2`,
      which is :math:`(\lambda/\sigma^2)\|\hat\varepsilon - \varepsilon\|^2` for ``eps`` (DDPM's loss when
      :math:`\lambda = \sigma^2`), :math:`(\lambda\alpha^2/\sigma^4)\|\hat x_0 - x_0\|^2` for ``x0``,
      :math:`\lambda\alpha^2/(\sigma^2(\alpha^2+\sigma^2)^2)\|\hat v - v\|^2` for ``v``, and for EDM's
      :math:`F` its target :math:`(x_0 - c_{skip}\tilde x)/c_{out}` with weight
      :math:`\lambda\alpha^2c_{out}^2/\sigma^4`
      — each *is* the :math:`\lambda`-weighted score loss, not an approximation of it.
    - ``x0``: data, ``(batch, *event_shape)``; dtype and device follow it (float64 works throughout).
    - ``weighting``: :math:`\lambda(t)`: ``"variance"`` (:math:`\sigma_t^2`, i.e.
      :math:`\propto 1/\mathbb E\|\nabla\log p_{0t}\|^2`), ``"likelihood"`` (:math:`g(t)^2`, Song et al. 2021b), or
      k-diffusion's ``"karras"`` (EDM's: unit weight on EDM's :math:`F`) and ``"soft_min_snr"``, or a function
      of float64 times ``(batch,)`` returning weights ``>= 0`` (see :func:`sdekit._losses._times.weighting_values`).
    - ``t_sampler``: ``"uniform"`` on :math:`[\epsilon, T]`, or ``"importance"``: :math:`t \sim q \propto
      g^2/\sigma^2` (uniform in log-SNR, see :mod:`sdekit._losses._times`), each term multiplied by
      :math:`1/((T-\epsilon)q(t))` so the expectation is the same; for the likelihood weighting this is the
      variance reduction of Song et al. (2021b).
    - ``reduce``: ``"mean"`` (default), ``"sum"`` over the batch, or ``"none"`` (per-sample, ``(batch,)``).
    - ``generator``: a ``torch.Generator`` for ``t`` and :math:`\varepsilon` (on x0's device, or the CPU).
    - ``eps``: the smallest time (default ``sde.eps``).
    - ``sigma_data``: :math:`\sigma_d` of the ``"karras"`` and ``"soft_min_snr"`` weightings (default: the
      adapter's, else 0.5).
    - ``t``, ``noise``: fixed times (a number or ``(batch,)``, each in :math:`[\epsilon, T]`; then
      ``t_sampler`` is not used) and fixed :math:`\varepsilon` shaped like ``x0``.

    Raises :class:`sdekit.SDEKitError` subclasses for data of the wrong shape, a model output that does not
    match, a weighting that is negative or not finite, and times outside :math:`[\epsilon, T]`.
    """
    check_linear(sde)
    check_data(x0)
    if reduce not in _REDUCE:
        raise InvalidParameterError(f"reduce must be 'mean', 'sum' or 'none', got {reduce!r}")
    if not callable(model):
        raise ArgumentTypeError(f"model must be a score function model(x, t) or an sdekit.adapters.Adapter, "
                                f"got {type(model).__name__}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ArgumentTypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    eps, T = interval(sde, eps)
    n, device, dtype = x0.shape[0], x0.device, x0.dtype
    if t is None:
        t64, factor = sample_times(sde, n, t_sampler, eps, T, generator, device)
    else:
        t64 = given_times(t, n, eps, T, device)
        factor = torch.ones_like(t64)
    tt = t64.to(time_dtype(dtype))               # the time the model sees; coefficients at that same time
    t64 = tt.to(torch.float64).clamp(eps, T)
    if noise is None:
        gen_device = generator.device if generator is not None else device
        noise = torch.randn(x0.shape, generator=generator, dtype=dtype, device=gen_device).to(device)
    elif not isinstance(noise, torch.Tensor) or noise.shape != x0.shape:
        raise ShapeError(f"noise must be a tensor shaped like x0 {tuple(x0.shape)}")
    else:
        noise = noise.to(device=device, dtype=dtype)
        if not bool(torch.isfinite(noise).all()):
            raise InvalidParameterError("noise has non-finite entries; pass finite standard normal draws")
    log_alpha, sigma64 = coefficients(sde, t64)
    x_t = per_sample(torch.exp(log_alpha).to(dtype), x0) * x0 + per_sample(sigma64.to(dtype), x0) * noise
    if sigma_data is None:
        sigma_data = getattr(getattr(model, "prediction", None), "sigma_data", 0.5)
    if isinstance(sigma_data, bool) or not isinstance(sigma_data, (int, float)) or not (0 < sigma_data < math.inf):
        raise InvalidParameterError(f"sigma_data must be a positive finite number, got {sigma_data!r}")
    lam = weighting_values(sde, weighting, t64, sigma_data)
    sq = _model_residual(sde, model, x_t, tt, noise, sigma64)
    per = (lam * factor).to(sq.dtype) * sq
    if reduce == "none":
        return per
    return per.sum() if reduce == "sum" else per.mean()
