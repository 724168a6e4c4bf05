r"""The adapter: a trained network, its parameterisation and its time convention, as a ``score_fn(x, t)``."""

import itertools
import math
import numbers
import re

import torch

from sdekit import ArgumentTypeError, InvalidParameterError, LinearSDE, ScoreFunctionError, ShapeError

from ._parameterisation import Coefficients, parameterisation
from ._time import time_convention

__all__ = ["Adapter"]


def _per_sample(v, x):
    return v.to(x.dtype).reshape((x.shape[0],) + (1,) * (x.dim() - 1))


def _batch_times(t, x):
    if isinstance(t, torch.Tensor):
        if t.dim() == 0:
            return t.to(x.device).expand(x.shape[0])
        if t.dim() == 1 and t.shape[0] == x.shape[0]:
            return t.to(x.device)
        raise ShapeError(f"t must be a number or have shape ({x.shape[0]},), got {tuple(t.shape)}")
    if isinstance(t, bool) or not isinstance(t, numbers.Real):
        raise ArgumentTypeError(f"t must be a number or a tensor of shape (batch,), got {type(t).__name__}")
    return torch.full((x.shape[0],), float(t), dtype=torch.float64, device=x.device)


def network_output(out, x, name="the network"):
    """``out`` unwrapped (a diffusers output's ``.sample``, a tuple's first entry) and checked against ``x``:
    a real floating tensor, on x's device, shaped like x."""
    if not isinstance(out, torch.Tensor):
        if hasattr(out, "sample") and isinstance(out.sample, torch.Tensor):
            out = out.sample
        elif isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
            out = out[0]
        else:
            raise ScoreFunctionError(f"{name} returned {type(out).__name__}; it must return a tensor shaped like x")
    if not out.is_floating_point():
        raise ScoreFunctionError(f"{name} returned a {out.dtype} tensor; it must return real floating-point "
                                 f"values (an integer or boolean output is not a prediction and would be cast "
                                 f"silently): check the network's last operation (an argmax, a comparison, a cast)")
    if out.device != x.device:
        if out.device.type == "meta":
            raise ShapeError(f"{name} returned a tensor on the 'meta' device (no values) for x on {x.device}: its "
                             f"weights were never loaded; load them (module.to_empty(device=...) then "
                             f"load_state_dict, or load_state_dict(state, assign=True)) before sampling")
        raise ShapeError(f"{name} returned a tensor on {out.device} for x on {x.device}; keep the network and the "
                         f"state on one device (network.to(x.device)) and return the output there")
    if out.shape != x.shape:
        raise ScoreFunctionError(f"{name} returned shape {tuple(out.shape)} for x of shape {tuple(x.shape)}; "
                                 f"it must predict one value per input entry (a learned-variance output has "
                                 f"twice the channels: wrap the network to return the first half)")
    return out


#: RuntimeError messages of torch about tensors on different devices or of different dtypes.
_DEVICE_WORDS = re.compile(r"device|meta tensor", re.IGNORECASE)
_DTYPE_WORDS = re.compile(r"dtype|scalar type|Input type .* and weight type", re.IGNORECASE)


def _module_of(fn):
    """The ``torch.nn.Module`` behind ``fn`` (itself, a diffusers wrapper's ``unet``, a bound method's owner)."""
    for candidate in (fn, getattr(fn, "unet", None), getattr(fn, "__self__", None)):
        if isinstance(candidate, torch.nn.Module):
            return candidate
    return None


def placement_problem(fn, x, err, name="the network"):
    """The one-line reason why ``fn`` failed on ``x`` with ``err`` if it is a device or dtype mismatch between
    its weights and the state (weights on 'meta', on another device, or in another dtype), else ``None``."""
    message = str(err)
    module = _module_of(fn)
    devices, dtypes = set(), set()
    if module is not None:
        for tensor in itertools.chain(module.parameters(), module.buffers()):
            devices.add(str(tensor.device))
            if tensor.is_floating_point():
                dtypes.add(tensor.dtype)
    here = str(x.device)
    first = " ".join(message.split())[:160]
    if ("meta" in devices or module is None and "meta" in message) and _DEVICE_WORDS.search(message):
        return (f"{name} has its weights on the 'meta' device (an empty module: no values were loaded) and x is "
                f"on {here}; load the weights before sampling (module.to_empty(device='{here}') then "
                f"load_state_dict, or load_state_dict(state, assign=True))")
    if devices and devices != {here} and _DEVICE_WORDS.search(message):
        there = ", ".join(sorted(devices))
        return (f"{name} has its weights on {there} but x is on {here}; put them on one device: "
                f"network.to('{here}'), or start the solve from x.to('{sorted(devices)[0]}')")
    if module is None and _DEVICE_WORDS.search(message) and "device" in message.lower():
        return (f"{name} failed on x on {here} with a device mismatch ({first}); put the network's weights and "
                f"the state on one device")
    if dtypes and x.dtype not in dtypes and _DTYPE_WORDS.search(message):
        have = ", ".join(sorted(str(d).replace("torch.", "") for d in dtypes))
        want = str(x.dtype).replace("torch.", "")
        return (f"{name} has {have} weights but x is {want} ({first}); cast one to the other: "
                f"network.to(torch.{want}), or solve with x in the network's dtype")
    return None


def call_network(fn, x, *args, name="the network", **kwargs):
    """``fn(*args, **kwargs)``, with a device or dtype mismatch between ``fn``'s weights and ``x`` reported as
    one line (:class:`sdekit.ShapeError`) instead of torch's traceback."""
    try:
        return fn(*args, **kwargs)
    except (RuntimeError, NotImplementedError) as err:
        problem = placement_problem(fn, x, err, name)
        if problem is None:
            raise
        raise ShapeError(problem) from None


class Adapter:
    r"""A trained network as a score function ``score_fn(x, t)`` of ``sde``.

    **Arguments**

    - ``network``: called as ``network(x_in, tau, **inputs)``; returns a tensor shaped like ``x`` (or a
      diffusers output, or a tuple whose first entry is that tensor).
    - ``sde``: the :class:`sdekit.LinearSDE` the network was trained with (its :math:`\alpha(t)`,
      :math:`\sigma(t)`); for a DDPM table, :class:`~sdekit.adapters.DiscreteVPSDE`.
    - ``prediction``: what the network predicts, one of ``eps``, ``x0``, ``v``, ``score``, ``denoiser``, ``edm``,
      ``flow`` (see :mod:`sdekit.adapters._parameterisation`).
    - ``time``: the network's time input, one of ``t``, ``scaled``, ``index``, ``sigma``, ``log_sigma``,
      ``c_noise`` (default ``"c_noise"`` for ``edm``, ``"sigma"`` for ``denoiser``, else ``"t"``);
      ``scale``, ``quantise``: its options.
    - ``sigma_data``: EDM's :math:`\sigma_d` (``edm`` only; default 0.5).
    - ``inputs``: keyword arguments passed to every network call (class labels, text embeddings);
      :meth:`with_inputs` makes a copy with others.

    Calling the adapter returns the score; :meth:`data` and :meth:`noise` return :math:`\hat x_0` and
    :math:`\hat\varepsilon` without a round trip through the score.  ``t`` has shape ``(batch,)`` (or is a
    number); coefficients are computed in float64 and cast to x's dtype.  The network runs under the
    caller's grad mode (no graph inside a solve unless ``grad=True`` is asked).  ``nfe_per_call`` is 1.
    """

    nfe_per_call = 1

    def __init__(self, network, sde, prediction: str = "eps", time=None, *, scale=None, quantise=None,
                 sigma_data: float = 0.5, inputs=None):
        if not callable(network):
            raise ArgumentTypeError(f"network must be callable as network(x, tau, **inputs), "
                                    f"got {type(network).__name__}")
        if not isinstance(sde, LinearSDE):
            raise ArgumentTypeError(f"sde must be an sdekit.LinearSDE (the process the network was trained with), "
                                    f"got {type(sde).__name__}")
        if isinstance(sigma_data, bool) or not isinstance(sigma_data, numbers.Real) or not (
                math.isfinite(sigma_data) and sigma_data > 0):
            raise InvalidParameterError(f"sigma_data must be a positive finite number, got {sigma_data!r}")
        if inputs is not None and not isinstance(inputs, dict):
            raise ArgumentTypeError(f"inputs must be a dict of keyword arguments for the network, got "
                                    f"{type(inputs).__name__}")
        self.network, self.sde = network, sde
        self.prediction = parameterisation(prediction, float(sigma_data))
        if time is None:
            time = {"edm": "c_noise", "denoiser": "sigma"}.get(self.prediction.name, "t")
        self.time = time_convention(time, sde, scale=scale, quantise=quantise)
        self.inputs = dict(inputs or {})

    def with_inputs(self, **inputs) -> "Adapter":
        """A copy of this adapter whose network calls take ``inputs`` (replacing the stored ones)."""
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.inputs = dict(inputs)
        return new

    # -- coefficients ----------------------------------------------------------------------
    def coefficients(self, x, t) -> Coefficients:
        """:math:`\\alpha`, :math:`\\sigma` (and their time derivatives where the prediction needs them) at
        the per-sample times ``t``, shaped to broadcast against ``x``, in x's dtype."""
        t64 = _batch_times(t, x).to(torch.float64)
        log_alpha = self.sde.log_alpha(t64)
        alpha, sigma = torch.exp(log_alpha), self.sde.sigma(t64)
        dalpha = dsigma = None
        if self.prediction.needs_derivatives:
            f, g = self.sde.drift_coef(t64), self.sde.diffusion_coef(t64)
            dalpha = _per_sample(f * alpha, x)
            dsigma = _per_sample((2 * f * sigma * sigma + g * g) / (2 * sigma), x)
        return Coefficients(_per_sample(alpha, x), _per_sample(sigma, x), dalpha, dsigma)

    # -- the network -----------------------------------------------------------------------
    def output(self, x, t, **inputs):
        """``(network output, coefficients)`` at ``(x, t)``; ``inputs`` replace the stored ones for this call."""
        tb = _batch_times(t, x)
        c = self.coefficients(x, tb)
        tau = self._network_time(tb.to(torch.float64))
        tau = tau.to(x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32)
        kwargs = self.inputs if not inputs else inputs
        raw = call_network(self.network, x, self.prediction.network_state(x, c), tau, **kwargs)
        return network_output(raw, x), c

    def _network_time(self, t64):
        """The network's time input at float64 times ``(batch,)``."""
        return self.time.to_network(t64)

    def __call__(self, x, t, **inputs):
        """The score :math:`\\nabla_x \\log p_t(x)` at ``(x, t)``."""
        out, c = self.output(x, t, **inputs)
        return self.prediction.score(out, x, c)

    score = __call__

    def data(self, x, t, **inputs):
        r"""The data prediction :math:`\hat x_0` at ``(x, t)``."""
        out, c = self.output(x, t, **inputs)
        return self.prediction.data(out, x, c)

    def noise(self, x, t, **inputs):
        r"""The noise prediction :math:`\hat\varepsilon` at ``(x, t)``."""
        out, c = self.output(x, t, **inputs)
        return self.prediction.noise(out, x, c)

    def __repr__(self):
        return (f"{type(self).__name__}(prediction={self.prediction.name!r}, time={self.time!r}, "
                f"sde={self.sde!r})")
