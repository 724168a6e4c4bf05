r"""Guidance that composes: every guided model is again a ``score_fn(x, t)``, so guidance stacks.

- :class:`ClassifierGuidance`: :math:`\tilde s = s + w\,\nabla_x\log p(y \mid x_t, t)`, the gradient of a
  noise-conditional classifier's log-softmax at the label, per sample (Dhariwal & Nichol 2021).
- :class:`ClassifierFreeGuidance`: :math:`\tilde s = s_u + w(s_c - s_u)` (Ho & Salimans 2022); two views of
  one :class:`~sdekit.adapters.Adapter` are evaluated in one batched network call, counted as 2 NFE.
- :class:`Imputation`: a per-step hook that replaces the known coordinates by a sample of their forward
  marginal, :math:`\alpha(t)y + \sigma(t)z`, after every step (Song et al. 2021, appendix I.2), with ``z``
  from the solve's keyed noise.

Guided objects carry the ``sde`` of what they wrap and give :meth:`data` and :meth:`noise` as well.
"""

import math
import numbers

import torch

from sdekit import ArgumentTypeError, InvalidParameterError, ScoreFunctionError, ShapeError

from ._adapter import Adapter, _batch_times, _per_sample, call_network

__all__ = ["ClassifierGuidance", "ClassifierFreeGuidance", "Imputation", "classifier_guidance",
           "classifier_free_guidance"]


def _scale(scale):
    if isinstance(scale, torch.Tensor) and scale.dim() == 0:
        scale = scale.item()
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale):
        raise InvalidParameterError(f"the guidance scale must be a finite number, got {scale!r}")
    return float(scale)


def _cost(fn):
    return int(getattr(fn, "nfe_per_call", 1))


def _callable(fn, name):
    if not callable(fn):
        raise ArgumentTypeError(f"{name} must be callable as {name}(x, t), got {type(fn).__name__}")
    return fn


class _Guided:
    """A score function built on others: ``sde`` from what it wraps; ``data`` and ``noise`` from the score."""

    sde = None

    def _coefs(self, x, t):
        if self.sde is None:
            raise InvalidParameterError(f"{type(self).__name__} wraps a plain score function without an sde; "
                                        f"wrap an sdekit.adapters.Adapter to get data() and noise()")
        t64 = _batch_times(t, x).to(torch.float64)
        return _per_sample(self.sde.alpha(t64), x), _per_sample(self.sde.sigma(t64), x)

    def data(self, x, t):
        r""":math:`\hat x_0 = (x + \sigma^2\tilde s)/\alpha` of the guided score."""
        alpha, sigma = self._coefs(x, t)
        return (x + sigma * sigma * self(x, t)) / alpha

    def noise(self, x, t):
        r""":math:`\hat\varepsilon = -\sigma\tilde s` of the guided score."""
        return -self._coefs(x, t)[1] * self(x, t)


class ClassifierGuidance(_Guided):
    r"""``score_fn`` guided by ``classifier``: :math:`s + w\,\nabla_x \log\operatorname{softmax}(c(x, t))_y`.

    **Arguments**

    - ``score_fn``: the unconditional score (an adapter or any ``score_fn``).
    - ``classifier``: ``classifier(x, t) -> logits`` of shape ``(batch, K)`` (log-probabilities are logits too).
    - ``label``: the class, an int or a tensor of ``(batch,)`` ints in ``0..K-1``.
    - ``scale``: :math:`w`, a finite number (1 samples :math:`p(x \mid y)` exactly when both models are exact).

    The gradient is taken per sample (of the sum of the samples' log-probabilities, which separates for a
    classifier that treats samples independently).  It is computed with autograd whatever the caller's
    grad mode; under ``torch.enable_grad`` (a solve with ``grad=True``) it keeps its own graph.
    ``nfe_per_call`` is that of ``score_fn``: NFE counts score-network evaluations, not the classifier's.
    """

    def __init__(self, score_fn, classifier, label, scale=1.0):
        self.score_fn = _callable(score_fn, "score_fn")
        self.classifier = _callable(classifier, "classifier")
        if isinstance(label, bool) or not (isinstance(label, numbers.Integral) or (
                isinstance(label, torch.Tensor) and not label.is_floating_point() and label.dim() <= 1)):
            raise ArgumentTypeError(f"label must be an int or a tensor of (batch,) ints, got {label!r:.60}")
        self.label, self.scale = label, _scale(scale)
        self.nfe_per_call = _cost(score_fn)
        self.sde = getattr(score_fn, "sde", None)

    def log_prob_gradient(self, x, t):
        r""":math:`\nabla_x \log p(y \mid x_t = x, t)` per sample."""
        if torch.is_inference_mode_enabled():
            raise InvalidParameterError("classifier guidance needs the gradient of log p(y | x) with respect to x, "
                                        "which torch.inference_mode() turns off: sample under torch.no_grad() "
                                        "instead (guidance enables the gradient it needs itself)")
        keep = torch.is_grad_enabled()
        with torch.enable_grad():
            if keep and x.requires_grad:
                xi = x
            else:           # an inference tensor (made under inference_mode) cannot require grad: copy it
                xi = (x.clone() if x.is_inference() else x.detach()).requires_grad_(True)
            logits = call_network(self.classifier, x, xi, t, name="the classifier")
            if not (isinstance(logits, torch.Tensor) and logits.dim() == 2 and logits.shape[0] == x.shape[0]):
                got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
                raise ShapeError(f"the classifier returned {got} for a batch of {x.shape[0]}; it must return "
                                 f"logits of shape ({x.shape[0]}, number of classes)")
            if not logits.is_floating_point():
                raise ShapeError(f"the classifier returned {logits.dtype} logits; it must return real "
                                 f"floating-point logits (or log-probabilities), differentiable in x")
            label = torch.as_tensor(self.label, device=x.device).long().expand(x.shape[0])
            if bool(((label < 0) | (label >= logits.shape[1])).any()):
                raise InvalidParameterError(f"label must lie in 0..{logits.shape[1] - 1}, the classifier's classes")
            logp = torch.log_softmax(logits, dim=1).gather(1, label[:, None]).sum()
            grad = None
            if logp.requires_grad:
                (grad,) = torch.autograd.grad(logp, xi, create_graph=keep, allow_unused=True)
            if grad is None:
                raise ScoreFunctionError(
                    "the classifier's logits have no autograd graph back to x (it runs under torch.no_grad() or "
                    "inference_mode, or detaches x, e.g. .detach(), .numpy(), .item()); guidance needs the gradient "
                    "of log p(y | x) with respect to x: remove that from the classifier's forward")
        return grad.to(x.dtype)

    def __call__(self, x, t):
        return self.score_fn(x, t) + self.scale * self.log_prob_gradient(x, t)

    def __repr__(self):
        return f"ClassifierGuidance(scale={self.scale}, label={self.label!r:.40})"


def _batch_inputs(uncond: dict, cond: dict, batch: int) -> dict:
    """The keyword inputs of one doubled batch: the unconditional rows first, then the conditional ones."""
    if set(uncond) != set(cond):
        raise InvalidParameterError(f"conditional inputs {sorted(cond)} and unconditional inputs {sorted(uncond)} "
                                    f"must have the same keys: pass the null condition explicitly")
    merged = {}
    for key in cond:
        u, c = uncond[key], cond[key]
        if isinstance(u, torch.Tensor) and isinstance(c, torch.Tensor):
            merged[key] = torch.cat([_rows(u, batch, key), _rows(c, batch, key)])
        elif isinstance(u, torch.Tensor) or isinstance(c, torch.Tensor) or u != c:
            raise InvalidParameterError(f"input {key!r} differs between the conditional and unconditional views "
                                        f"but is not a tensor: only tensors can be batched")
        else:
            merged[key] = c
    return merged


def _rows(v, batch, key):
    if v.dim() > 0 and v.shape[0] == batch:
        return v
    if v.dim() == 0 or v.shape[0] == 1:
        return v.expand((batch,) + tuple(v.shape[1:]))
    raise ShapeError(f"input {key!r} has leading size {v.shape[0]}; give one row per sample ({batch}) or one row")


class ClassifierFreeGuidance(_Guided):
    r"""Classifier-free guidance :math:`\tilde s = s_u + w(s_c - s_u)`.

    **Arguments**

    - ``conditional``, ``unconditional``: the two score functions.  When both are views of one
      :class:`~sdekit.adapters.Adapter` (``adapter.with_inputs(...)``) the network runs once on the doubled
      batch (unconditional rows first), as diffusers' pipelines do; otherwise each is called.
    - ``scale``: :math:`w`, a finite number: 1 is the conditional score, 0 the unconditional one.

    ``nfe_per_call`` is the sum of the two (2 for one network): one call costs two network evaluations per
    sample.  The combination is linear, so :meth:`data` and :meth:`noise` are the same combination of the
    two models' :math:`\hat x_0` and :math:`\hat\varepsilon`.
    """

    def __init__(self, conditional, unconditional, scale):
        self.conditional = _callable(conditional, "conditional")
        self.unconditional = _callable(unconditional, "unconditional")
        self.scale = _scale(scale)
        self.nfe_per_call = _cost(conditional) + _cost(unconditional)
        self.sde = getattr(conditional, "sde", None)
        c, u = conditional, unconditional
        self.batched = (isinstance(c, Adapter) and isinstance(u, Adapter) and c.network is u.network
                        and c.sde is u.sde and type(c.prediction) is type(u.prediction)
                        and c.prediction.sigma_data == u.prediction.sigma_data and repr(c.time) == repr(u.time))

    def _both(self, x, t, what):
        if not self.batched:
            c, u = self.conditional, self.unconditional
            if what == "score":
                return c(x, t), u(x, t)
            return getattr(c, what)(x, t), getattr(u, what)(x, t)
        b = x.shape[0]
        inputs = _batch_inputs(self.unconditional.inputs, self.conditional.inputs, b)
        tb = _batch_times(t, x)
        both = getattr(self.conditional, what)(torch.cat([x, x]), torch.cat([tb, tb]), **inputs)
        return both[b:], both[:b]

    def _combine(self, x, t, what):
        c, u = self._both(x, t, what)
        return c + (self.scale - 1) * (c - u)        # = u + w (c - u); exactly c at w = 1

    def __call__(self, x, t):
        return self._combine(x, t, "score")

    def data(self, x, t):
        return self._combine(x, t, "data")

    def noise(self, x, t):
        return self._combine(x, t, "noise")

    def __repr__(self):
        return f"ClassifierFreeGuidance(scale={self.scale}, batched={self.batched})"


def classifier_guidance(score_fn, classifier, label, scale=1.0) -> ClassifierGuidance:
    """``score_fn`` guided towards ``label`` by ``classifier``; see :class:`ClassifierGuidance`."""
    return ClassifierGuidance(score_fn, classifier, label, scale)


def classifier_free_guidance(conditional, unconditional, scale) -> ClassifierFreeGuidance:
    """``unconditional + scale * (conditional - unconditional)``; see :class:`ClassifierFreeGuidance`."""
    return ClassifierFreeGuidance(conditional, unconditional, scale)


class Imputation:
    r"""A solve hook that fixes known coordinates: ``options={"hook": Imputation(sde, y, mask)}``.

    After every step (and on the initial state) the coordinates where ``mask`` is true are replaced by
    :math:`\alpha(t)\,y + \sigma(t)\,z`, a sample of their forward marginal given the observation ``y``,
    with ``z`` the solve's keyed normals at ``t`` (``noise.normal(t, tag)``), so a sample is the same in any
    batch.  Song et al. (2021), appendix I.2.  This is the replacement method: it approximates
    :math:`\nabla\log p_t(x_t^{\bar\Omega} \mid y)` by the joint score with the known part resampled, and is
    not exact in general (see the adapters documentation for its bias on a correlated Gaussian).

    **Arguments**

    - ``sde``: the :class:`sdekit.LinearSDE` being sampled.
    - ``known``: the observation :math:`y`, shaped like one sample ``event_shape`` or like the batch.
    - ``mask``: boolean, broadcastable to the batch; true where ``known`` holds.
    - ``tag``: the keyed-noise tag (default ``2**20``, away from the samplers' own tags).

    :meth:`finish` writes :math:`y` itself into a final state.
    """

    def __init__(self, sde, known, mask, tag: int = 2 ** 20):
        if not isinstance(known, torch.Tensor) or not known.is_floating_point():
            raise ArgumentTypeError("known must be a floating-point tensor, the observed values")
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise ArgumentTypeError("mask must be a boolean tensor, true where the values are known")
        try:
            torch.broadcast_shapes(known.shape, mask.shape)
        except RuntimeError:
            raise ShapeError(f"known {tuple(known.shape)} and mask {tuple(mask.shape)} do not broadcast together")
        self.sde, self.known, self.mask, self.tag = sde, known, mask, int(tag)

    def __call__(self, x, t, noise):
        try:
            torch.broadcast_shapes(x.shape, self.known.shape, self.mask.shape)
        except RuntimeError:
            raise ShapeError(f"known {tuple(self.known.shape)} and mask {tuple(self.mask.shape)} do not broadcast "
                             f"against the state {tuple(x.shape)}")
        t64 = t.to(torch.float64)
        alpha, sigma = _per_sample(self.sde.alpha(t64), x), _per_sample(self.sde.sigma(t64), x)
        z = noise.normal(t64, tag=self.tag).to(device=x.device, dtype=x.dtype)
        y = self.known.to(device=x.device, dtype=x.dtype)
        return torch.where(self.mask.to(x.device), alpha * y + sigma * z, x)

    def finish(self, x):
        """``x`` with the known coordinates set to the observation itself."""
        return torch.where(self.mask.to(x.device), self.known.to(device=x.device, dtype=x.dtype), x)

    def __repr__(self):
        return f"Imputation(known={tuple(self.known.shape)}, mask={tuple(self.mask.shape)})"
