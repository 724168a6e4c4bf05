r"""The model as a stepper sees it, for any :class:`sdekit.LinearSDE`: its predictions, and the SDE's coefficients
as :class:`Coef` values that meet the state already cast and shaped.

:math:`\alpha` and :math:`\sigma` come from ``sde.log_alpha_sigma``: the SDE's closed forms, or without them its
moment ODEs solved numerically from ``drift_coef`` and ``diffusion_coef``; the log-SNR's inverse is
``sde.t_of_log_snr`` either way.

With :math:`x_t = \alpha(t) x_0 + \sigma(t)\varepsilon` and the score :math:`s \approx \nabla\log p_t`:

- data prediction :math:`\hat x_0 = (x + \sigma^2 s)/\alpha`, noise prediction :math:`\hat\varepsilon = -\sigma s`;
- log-SNR :math:`\lambda = \log\alpha - \log\sigma`, and its inverse ``sde.t_of_log_snr``;
- the VE-frame noise level :math:`\tilde\sigma = \sigma/\alpha = e^{-\lambda}` and state :math:`\tilde x = x/\alpha`,
  in which the probability-flow ODE is :math:`d\tilde x/d\tilde\sigma = (\tilde x - \hat x_0)/\tilde\sigma`
  (Karras et al. 2022, eq. 4).

Coefficients are computed in float64 from float64 per-sample times of shape ``(batch,)``, combined in float64
(:math:`\lambda' - \lambda`, :math:`e^{-h} - 1`, ratios of :math:`\sigma`), and cast to the state's dtype only
where they multiply a state; the model sees times in the state's dtype, at least float32.
"""

import operator

import torch

from .._broadcast import per_sample
from .._errors import MethodArgumentError
from .._sde import LinearSDE


def model_time(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``t`` as the score function receives it: in ``x``'s dtype, but never coarser than float32."""
    dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    return t.to(dtype=dtype)


def _value(c):
    return c.value if isinstance(c, Coef) else c


def _binary(op):
    """The operator ``op`` and its reflection, for :class:`Coef`: float64 with a coefficient or a number, in the
    state's dtype and shape with a tensor."""
    def forward(self, other):
        if isinstance(other, Coef):
            return Coef(op(self.value, other.value))
        if isinstance(other, torch.Tensor):
            return op(self.like(other), other)
        return Coef(op(self.value, other))

    def reflected(self, other):
        if isinstance(other, torch.Tensor):
            return op(other, self.like(other))
        return Coef(op(other, self.value))
    return forward, reflected


def _unary(fn):
    """The elementwise function ``fn`` of a :class:`Coef`, in float64."""
    return lambda self: Coef(fn(self.value))


class Coef:
    r"""A per-sample coefficient of a step: float64 values of shape ``(batch,)``, or ``(1,)`` where every sample
    has the same (on a fixed grid, so that the coefficients cost what scalars do whatever the batch).

    Arithmetic with other coefficients and with numbers stays a float64 ``Coef``; arithmetic with a tensor (a
    state, ``(batch, *event_shape)``) casts the coefficient to the state's dtype and shapes it
    ``(batch, 1, ..., 1)`` first, so a step reads as its formula: ``sigma1 / sigma * x - alpha1 * phi1 * x0``
    is :math:`\tfrac{\sigma'}{\sigma}x - \alpha'\varphi_1\hat x_0` with :math:`\sigma'/\sigma` and
    :math:`\alpha'\varphi_1` formed in float64.  ``value`` is the float64 tensor itself.
    """

    __slots__ = ("value",)

    def __init__(self, value: torch.Tensor):
        self.value = value

    def like(self, x: torch.Tensor) -> torch.Tensor:
        """The coefficient cast to ``x``'s dtype and shaped to broadcast against it."""
        v = self.value.to(x.dtype)
        return v.view(v.shape + (1,) * (x.dim() - 1)) if v.dim() == 1 else per_sample(v, x)

    __add__, __radd__ = _binary(operator.add)
    __sub__, __rsub__ = _binary(operator.sub)
    __mul__, __rmul__ = _binary(operator.mul)
    __truediv__, __rtruediv__ = _binary(operator.truediv)
    __neg__, exp, expm1, log, sqrt, abs = map(_unary, (torch.neg, torch.exp, torch.expm1, torch.log, torch.sqrt,
                                                         torch.abs))

    def __pow__(self, p):
        return Coef(self.value ** _value(p))

    def clamp_min(self, low: float):
        return Coef(self.value.clamp_min(low))

    def __repr__(self):
        return f"Coef({self.value!r})"


class Model:
    r"""The model of a solve as a stepper sees it: the score function's predictions and the coefficients of its
    :class:`LinearSDE` at per-sample times.

    ``evaluate(x, t)`` is the counted, checked score call (the process's evaluator); ``score``, ``data`` and
    ``eps`` return :math:`s`, :math:`\hat x_0` and :math:`\hat\varepsilon` at per-sample times ``t`` (float64
    ``(batch,)``); ``alpha``, ``sigma``, ``log_snr``, ``sigma_ve`` and ``ends`` return :class:`Coef` values.
    """

    def __init__(self, process, method_name: str):
        sde = process.sde
        if not isinstance(sde, LinearSDE):
            raise MethodArgumentError(f"{method_name} steps in the frames of a linear SDE (alpha, sigma, log-SNR); "
                                      f"{type(sde).__name__} is not an sdekit.LinearSDE: use euler, heun or an "
                                      f"adaptive method instead")
        self.sde = sde
        self.process = process
        self.evaluate = process.evaluator
        self._known = {}    # id(time tensor) -> (the tensor, alpha, sigma, lam, model): the grid's, computed up front
        self.batch = None   # the batch of the remembered grid: times the model sees are per sample

    def remember(self, times, x):
        """Per-sample time tensors ``(batch,)`` for the 1-D grid ``times`` and the state ``x``, their coefficients
        computed at once for the whole grid.

        A stepper asked for alpha, sigma or log-SNR at one of these tensors, or for the model's predictions
        there, gets the coefficients without recomputing them, of shape ``(1,)``: every sample has the same.
        """
        batch = self.batch = x.shape[0]
        log_alpha, sigma = self.sde.log_alpha_sigma(times)
        alpha = torch.exp(log_alpha)
        lam = torch.log(alpha / sigma)
        shape = (times.numel(),) + (1,) * x.dim()
        model = [c.to(x.dtype).view(shape) for c in (sigma * sigma, 1 / alpha, sigma)]
        ts = [times[i].expand(batch) for i in range(times.numel())]
        self._known = {id(t): (t, alpha[i:i + 1], sigma[i:i + 1], lam[i:i + 1], tuple(c[i] for c in model))
                       for i, t in enumerate(ts)}
        return ts

    # -- coefficients (float64, per sample) -----------------------------------------------------
    def _remembered(self, t):
        """What :meth:`remember` computed for the time tensor ``t``, or ``None``."""
        known = self._known.get(id(t))
        return known if known is not None and known[0] is t else None

    def _coefs(self, t):
        """``(alpha, sigma)`` at the per-sample times ``t``, float64 tensors."""
        known = self._remembered(t)
        if known is not None:
            return known[1], known[2]
        log_alpha, sigma = self.sde.log_alpha_sigma(t)
        return torch.exp(log_alpha), sigma

    def _lam(self, t, alpha, sigma):
        known = self._remembered(t)
        return known[3] if known is not None else torch.log(alpha / sigma)

    def _model_coefs(self, t, x):
        r""":math:`(\sigma^2, 1/\alpha, \sigma)` at ``t`` in ``x``'s dtype, shaped to broadcast against it (computed
        up front for the grid's times)."""
        known = self._remembered(t)
        if known is not None and known[4][0].dtype == x.dtype and known[4][0].dim() == x.dim():
            return known[4]
        alpha, sigma = self._coefs(t)
        return tuple(per_sample(c.to(x.dtype), x) for c in (sigma * sigma, 1 / alpha, sigma))

    def alpha(self, t) -> Coef:
        return Coef(self._coefs(t)[0])

    def sigma(self, t) -> Coef:
        return Coef(self._coefs(t)[1])

    def log_snr(self, t) -> Coef:
        alpha, sigma = self._coefs(t)
        return Coef(self._lam(t, alpha, sigma))

    def ends(self, t, t_next):
        r"""``(alpha, sigma, lam, alpha', sigma', lam')`` at the two ends of a step, as :class:`Coef` values: what
        every exponential integrator starts from (:math:`h = \lambda' - \lambda`)."""
        (alpha, sigma), (alpha1, sigma1) = self._coefs(t), self._coefs(t_next)
        return (Coef(alpha), Coef(sigma), Coef(self._lam(t, alpha, sigma)),
                Coef(alpha1), Coef(sigma1), Coef(self._lam(t_next, alpha1, sigma1)))

    def _per_sample(self, t):
        """Times ``(batch,)`` from times computed from shared coefficients (shape ``(1,)``)."""
        return t.expand(self.batch) if self.batch is not None and t.shape == (1,) else t

    def t_of_log_snr(self, lam: Coef) -> torch.Tensor:
        """The per-sample times at log-SNR ``lam``."""
        return self._per_sample(self.sde.t_of_log_snr(_value(lam)))

    def at_log_snr(self, lam: Coef):
        """``(t, alpha, sigma)`` at log-SNR ``lam``: where a single-step solver evaluates between the ends."""
        s = self.sde.t_of_log_snr(_value(lam))
        alpha, sigma = self._coefs(s)
        return self._per_sample(s), Coef(alpha), Coef(sigma)

    def sigma_ve(self, t) -> Coef:
        r""":math:`\tilde\sigma = \sigma/\alpha`."""
        alpha, sigma = self._coefs(t)
        return Coef(sigma / alpha)

    def to_ve(self, x, t):
        r"""The VE-frame state :math:`\tilde x = x/\alpha`."""
        return x / self.alpha(t)

    def from_ve(self, x_ve, t):
        r"""The state :math:`x = \alpha\tilde x` of a VE-frame state."""
        return self.alpha(t) * x_ve

    def t_of_sigma_ve(self, s) -> torch.Tensor:
        r"""The time at which :math:`\tilde\sigma =` ``s``: :math:`\lambda^{-1}(-\log s)`."""
        return self._per_sample(self.sde.t_of_log_snr(-torch.log(_value(s))))

    # -- the model --------------------------------------------------------------------------
    def score(self, x, t):
        return self.evaluate(x, model_time(t, x))

    def data(self, x, t):
        r""":math:`\hat x_0 = (x + \sigma^2 s)/\alpha`."""
        s = self.score(x, t)
        sigma2, inv_alpha, _ = self._model_coefs(t, x)
        return torch.addcmul(x, sigma2, s) * inv_alpha

    def eps(self, x, t):
        r""":math:`\hat\varepsilon = -\sigma s`."""
        return -self._model_coefs(t, x)[2] * self.score(x, t)
