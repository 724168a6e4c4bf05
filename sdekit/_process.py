r"""The processes that :func:`sdekit.solve` integrates, each readable by torchsde and torchdiffeq as it is.

- :class:`ReverseSDE`, from :func:`reverse`: :math:`dx = [f - \nabla\!\cdot(gg^\top) - gg^\top\nabla\log p_t]\,dt + g\,d\bar w`,
  integrated from ``T`` down to ``eps``.
- :class:`ProbabilityFlowODE`, from :func:`probability_flow`:
  :math:`dx = [f - \tfrac12\nabla\!\cdot(gg^\top) - \tfrac12 gg^\top\nabla\log p_t]\,dt`, same marginals, deterministic.
- :class:`ForwardSDE`, from :func:`forward`: the forward SDE itself, from ``0`` to ``T``.

Each speaks two dialects.  In natural time and natural shape, :meth:`Process.drift` and
:meth:`Process.diffusion` take ``t`` of shape ``(batch,)``; the probability-flow ODE is also a
torchdiffeq function ``ode(t, x)``.  For torchsde (increasing times, 2-D states) each is an SDE
with ``f(s, y)`` and ``g(s, y)`` on the clock ``s = T - t`` (reverse processes) or ``s = t``
(forward), with the state flattened to ``(batch, prod(event_shape))``.

:meth:`Process.solve` and the likelihood methods of :class:`ProbabilityFlowODE` call the package's public
functions (:func:`sdekit.solve`, :func:`sdekit.log_likelihood`, ...), whose modules import this one.
"""

import inspect
import numbers
from typing import Callable, Optional, Sequence

import torch

import sdekit

from ._broadcast import batch_times, per_sample, time_dtype
from ._errors import ArgumentTypeError, InvalidParameterError, ShapeError
from ._evaluator import Evaluator
from ._sde import SDE

__all__ = ["Process", "ReverseSDE", "ProbabilityFlowODE", "ForwardSDE", "reverse", "probability_flow", "forward"]

_SDE_TYPES = ("ito", "stratonovich")
_NOISE_TYPES = ("diagonal", "additive")


class Process:
    """A drift (and diffusion) integrated between two times; base of the three processes.

    Subclasses define :meth:`_natural_drift`, :attr:`kind`, the clock and the default interval.
    """

    kind = "sde"            # "sde" or "ode"
    _direction = -1.0       # ds/dt on the torchsde clock
    _expensive = "score_fn"

    def __init__(self, sde: SDE, fn: Callable, event_shape: Optional[Sequence[int]] = None,
                 sde_type: str = "ito", t_min: Optional[float] = None, t_max: Optional[float] = None,
                 noise_type: str = "diagonal"):
        if not isinstance(sde, SDE):
            raise ArgumentTypeError(f"expected an sdekit.SDE, got {type(sde).__name__}; "
                                    "subclass sdekit.SDE with f and g")
        if not callable(fn):
            raise ArgumentTypeError(f"{self._expensive} must be callable as {self._expensive}(x, t)")
        if sde_type not in _SDE_TYPES:
            raise InvalidParameterError(f"sde_type must be 'ito' or 'stratonovich', got {sde_type!r}")
        if noise_type not in _NOISE_TYPES:
            raise InvalidParameterError(f"noise_type must be 'diagonal' or 'additive', got {noise_type!r}")
        self.sde = sde
        self.fn = fn
        self.noise_type = noise_type
        self.event_shape = None if event_shape is None else tuple(int(n) for n in event_shape)
        self.sde_type = sde_type
        lo, hi = self.default_interval()
        self.t_min = float(lo if t_min is None else t_min)
        self.t_max = float(hi if t_max is None else t_max)
        self.evaluator = Evaluator(fn, self._expensive)
        self._g_takes_x = _takes_x(sde)
        self._x_dependent = None if self._g_takes_x else False  # whether g depends on x; probed on first use
        self._f_checked = self._g_checked = False               # the SDE's outputs are checked on first use

    # -- construction ---------------------------------------------------------------------
    def default_interval(self):
        """The interval ``(low, high)`` of natural time on which the process lives."""
        return self.sde.eps, self.sde.T

    def default_span(self):
        """``(t_start, t_end)`` of a solve when the user gives neither: the interval, run in the process's direction."""
        low, high = self.default_interval()
        return (low, high) if self.runs_forward else (high, low)

    def replace(self, **changes) -> "Process":
        """A copy with some of ``event_shape``, ``sde_type``, ``noise_type``, ``t_min``, ``t_max`` changed.

        The copy has fresh counters.  ``noise_type="additive"`` (valid when g does not depend on x)
        lets torchsde's srk use its additive-noise scheme SRA1: 3 drift evaluations a step instead of 10;
        its ``g`` then materialises the diagonal matrix, so keep it for small states.
        """
        kw = dict(event_shape=self.event_shape, sde_type=self.sde_type, noise_type=self.noise_type,
                  t_min=self.t_min, t_max=self.t_max)
        kw.update(changes)
        return type(self)(self.sde, self.fn, **kw)

    def as_stratonovich(self) -> "Process":
        """The same process declared Stratonovich for torchsde (drift corrected when g depends on x)."""
        return self.replace(sde_type="stratonovich")

    def as_ito(self) -> "Process":
        """The same process declared Itô for torchsde."""
        return self.replace(sde_type="ito")

    @property
    def runs_forward(self) -> bool:
        """Whether the process runs forward in natural time (a forward SDE) rather than from T down."""
        return self._direction > 0

    @property
    def nfe(self) -> int:
        """Evaluations of the expensive function (the score network) made through this process so far.

        Direct calls (``drift``, torchdiffeq or torchsde using the process) and every solve of it count:
        :func:`sdekit.solve` counts on a bound copy and adds its count here when it ends.
        """
        return self.evaluator.nfe

    # -- natural time and shape -----------------------------------------------------------
    def drift(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The Itô drift :math:`dx/dt` at times ``t`` (shape ``(batch,)``), shaped like ``x``.

        ``t`` may also be a number or a 0-dim tensor (one time for the whole batch).  It is clamped into
        ``[t_min, t_max]``: a backend that asks for a time outside the interval (torchdiffeq's initial-step
        heuristic, an overshooting step) gets the nearest time inside, so neither the score nor the SDE's
        coefficients (VP's beta(t) < 0) are evaluated outside it.  A NaN time (a method whose step went
        non-finite) never reaches the score: the sample is recorded as a failure of the method.
        """
        return self._natural_drift(self.evaluator.times(t, x, self.t_min, self.t_max), x)

    def diffusion(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The diffusion at ``t``: shape ``(batch,)`` or shaped like ``x``; zeros for an ODE."""
        return self._sde_g(t, x)

    def solve(self, x: torch.Tensor, method: Optional[str] = None, **options):
        """Integrate from ``t_start`` to ``t_end`` with any registered method; see :func:`sdekit.solve`."""
        return sdekit.solve(self, x, method=method, **options)

    # -- the SDE's coefficients, checked on first use -----------------------------------------
    def _sde_f(self, t, x):
        """``sde.f(t, x)``; the first call checks that it is a tensor shaped like ``x``."""
        f = self.sde.f(t, x)
        if not self._f_checked:
            if not isinstance(f, torch.Tensor) or f.shape != x.shape:
                raise ShapeError(f"{type(self.sde).__name__}.f returned {_describe(f)} for x of shape "
                                 f"{tuple(x.shape)}; f(t, x) must return a tensor shaped like x")
            _check_like(f, x, self.sde, "f")
            self._f_checked = True
        return f

    def _sde_g(self, t, x):
        """``sde.g(t, x)`` (or ``sde.g(t)``) as a tensor of shape ``(batch,)`` or ``x.shape``.

        A number or a 0-dim tensor is a constant diffusion, broadcast over the batch.  The first
        other result is checked: its shape, and that a ``(batch,)`` result follows the batch.
        """
        g = self.sde.g(t, x) if self._g_takes_x else self.sde.g(t)
        if not isinstance(g, torch.Tensor):
            if isinstance(g, bool) or not isinstance(g, numbers.Real):
                raise ShapeError(f"{type(self.sde).__name__}.g returned {_describe(g)}; {_G_SHAPES}")
            g = torch.tensor(float(g), dtype=x.dtype, device=x.device)
        if g.dim() == 0:
            return g.to(dtype=x.dtype, device=x.device).expand(x.shape[0])
        if not self._g_checked:
            self._check_g(g, t, x)
        return g

    def _check_g(self, g, t, x):
        name = f"{type(self.sde).__name__}.g"
        batch = x.shape[0]
        if g.shape not in (x.shape, (batch,)):
            raise ShapeError(f"{name} returned shape {tuple(g.shape)} for x of shape {tuple(x.shape)}; {_G_SHAPES}")
        if g.shape != x.shape and batch > 1:
            # (batch,) could be a per-coordinate vector that happens to match the batch: ask for one sample
            one = self.sde.g(t[:1], x[:1]) if self._g_takes_x else self.sde.g(t[:1])
            if isinstance(one, torch.Tensor) and one.dim() > 0 and one.shape != (1,):
                raise ShapeError(f"{name} returned shape {tuple(g.shape)} for a batch of {batch} but "
                                 f"{tuple(one.shape)} for a batch of 1: it does not follow the batch; {_G_SHAPES}")
        _check_like(g, x, self.sde, "g")
        self._g_checked = True

    # -- helpers --------------------------------------------------------------------------
    def diffusion_depends_on_x(self, t: torch.Tensor, x: torch.Tensor) -> bool:
        """Whether ``sde.g`` depends on ``x`` (probed once with autograd, then cached)."""
        if self._x_dependent is None:
            with torch.enable_grad():
                xr = x.detach().requires_grad_(True)
                g = self._sde_g(t, xr)
                grad = torch.autograd.grad(g.sum(), xr, allow_unused=True)[0] if g.requires_grad else None
            self._x_dependent = grad is not None
        return self._x_dependent

    def _g_squared_divergence(self, t, x):
        r""":math:`\partial_i (g_i^2)` for an elementwise diffusion :math:`g_i(t, x_i)`."""
        # Keep a graph only when the caller differentiates through x; otherwise every step of a solve
        # would hang its graph on the result (which then requires grad and holds all steps in memory).
        keep = torch.is_grad_enabled() and x.requires_grad
        with torch.enable_grad():
            xr = x if keep else x.detach().requires_grad_(True)
            g = self._sde_g(t, xr)
            (div,) = torch.autograd.grad((g * g).sum(), xr, create_graph=keep)
        return div

    # -- torchsde dialect -----------------------------------------------------------------
    def _natural(self, s, y):
        """The state in its natural shape and the time ``(batch,)`` in :func:`time_dtype` (float32 at least)."""
        x = y if self.event_shape is None else y.view((y.shape[0],) + self.event_shape)
        return batch_times(self._t_of_s(s), x, dtype=time_dtype(x.dtype)), x

    def _t_of_s(self, s):
        return (self.sde.T - s) if self._direction < 0 else s

    def f(self, s, y: torch.Tensor) -> torch.Tensor:
        """torchsde drift on the clock ``s`` with the flattened state ``y``."""
        t, x = self._natural(s, y)
        out = self._direction * self.drift(t, x)
        t = t.to(x.dtype)
        if self.sde_type == "stratonovich" and self.kind == "sde" and self.diffusion_depends_on_x(t, x):
            out = out - 0.25 * self._g_squared_divergence(t, x)  # Stratonovich: minus ½ g ∂g = ¼ ∂(g²)
        return out.reshape(y.shape)

    def g(self, s, y: torch.Tensor) -> torch.Tensor:
        """torchsde diffusion on the clock ``s``: ``(batch, d)`` if diagonal, ``(batch, d, d)`` if additive."""
        t, x = self._natural(s, y)
        g = per_sample(self.diffusion(t.to(x.dtype), x), x).expand(x.shape).reshape(y.shape)
        return torch.diag_embed(g) if self.noise_type == "additive" else g

    def g_prod(self, s, y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """torchsde's product of the diffusion with a noise increment ``v`` of shape ``(batch, d)``."""
        t, x = self._natural(s, y)
        return (per_sample(self.diffusion(t.to(x.dtype), x), x) * v.view(x.shape)).reshape(y.shape)

    def __repr__(self):
        return f"{type(self).__name__}({self.sde!r}, {getattr(self.fn, '__name__', self.fn)!r})"


class _ScoreDriven(Process):
    r"""Drift :math:`f - c\,[\nabla\!\cdot(gg^\top) + gg^\top \nabla\log p_t]` with :math:`c = 1` or :math:`\tfrac12`."""

    _score_weight = 1.0

    def _natural_drift(self, t, x):
        g = per_sample(self._sde_g(t, x), x)
        score = self.evaluator(x, t)
        if self.diffusion_depends_on_x(t, x):
            correction = g * g * score + self._g_squared_divergence(t, x)
            return self._sde_f(t, x) - self._score_weight * correction
        # g does not depend on x: fold the weight (1 or 1/2: exact) into g^2 while it is still per-sample,
        # so the state-sized work is one product and one difference (the result is the same).
        return self._sde_f(t, x) - (self._score_weight * (g * g)) * score


class ReverseSDE(_ScoreDriven):
    r"""The reverse-time SDE :math:`dx = [f - g^2\nabla\log p_t(x)]\,dt + g\,d\bar w`, run from ``T`` to ``eps``.

    Anderson (1982); Song et al. (2021), eq. 6.  For a diffusion that depends on ``x`` the
    drift also carries :math:`-\partial_i(g_i^2)` (Song et al. 2021, eq. 16).  For torchsde it is
    a diagonal-noise SDE on the clock ``s = T - t`` with drift :math:`-(f - g^2 s_\theta)(T - s)`
    and diffusion :math:`g(T - s)`; ``as_stratonovich()`` gives the twin that torchsde's
    Stratonovich methods (heun, midpoint, reversible_heun, log_ode, euler_heun) accept.
    """


class ProbabilityFlowODE(_ScoreDriven):
    r"""The probability-flow ODE :math:`dx/dt = f - \tfrac12 g^2 \nabla\log p_t(x)`, run from ``T`` to ``eps``.

    Song et al. (2021), eq. 13: deterministic, with the same marginals as the SDE.  Call it as
    ``ode(t, x)`` (torchdiffeq: ``t`` a scalar, natural time and shape, decreasing times allowed).
    For torchsde it is an SDE whose diffusion is zeros of the state's shape.
    """

    kind = "ode"
    _score_weight = 0.5

    def diffusion(self, t, x):
        return torch.zeros_like(x)

    def __call__(self, t, x):
        return self.drift(batch_times(t, x), x)

    def log_likelihood(self, x, method="dopri5", **options):
        r"""Per-sample :math:`\log p(x) = \log\pi(x_T) + \int_\epsilon^T \nabla\!\cdot v\,dt` in nats.

        See :func:`sdekit.log_likelihood`; returns a :class:`sdekit.Likelihood` (NFE and the solve's statistics).
        """
        return sdekit.log_likelihood(self, x, method, **options)

    def encode(self, x, method="dopri5", **options):
        """The latent at ``T`` of data ``x`` (a Solution whose ``x`` is ``z``); see :func:`sdekit.encode`."""
        return sdekit.encode(self, x, method, **options)

    def decode(self, z, method="dopri5", **options):
        """The data at ``eps`` of a latent ``z`` (a Solution whose ``x`` is the data); see :func:`sdekit.decode`."""
        return sdekit.decode(self, z, method, **options)


class ForwardSDE(Process):
    r"""The forward SDE :math:`dx = f\,dt + g\,dw` as a process from ``0`` to ``T``; NFE counts drift calls."""

    _direction = 1.0
    _expensive = "f"

    def __init__(self, sde: SDE, fn: Optional[Callable] = None, **kw):
        super().__init__(sde, fn if fn is not None else _SDEDrift(sde), **kw)

    def default_interval(self):
        return 0.0, self.sde.T

    def _natural_drift(self, t, x):
        return self.evaluator(x, t)


class _SDEDrift:
    """``sde.f`` called as ``fn(x, t)``: the expensive function of a forward SDE (a class, so it pickles)."""

    def __init__(self, sde):
        self.sde = sde
        self.__name__ = f"{type(sde).__name__}.f"

    def __call__(self, x, t):
        return self.sde.f(t, x)


_G_SHAPES = "g must return a tensor of shape (batch,) (one scale per sample) or shaped like x, or a number"


def _takes_x(sde) -> bool:
    """Whether ``sde.g`` takes ``(t, x)`` or only ``(t)``, read once from its signature."""
    try:
        params = inspect.signature(sde.g).parameters.values()
    except (TypeError, ValueError):   # a builtin or C function without a signature: call it as g(t, x)
        return True
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if not positional:
        raise ArgumentTypeError(f"{type(sde).__name__}.g must take (t, x) or (t), got no positional argument")
    return len(positional) >= 2


def _describe(v) -> str:
    return f"shape {tuple(v.shape)}" if isinstance(v, torch.Tensor) else f"a {type(v).__name__}"


def _check_like(v, x, sde, name):
    if v.dtype != x.dtype or v.device != x.device:
        raise ShapeError(f"{type(sde).__name__}.{name} returned {v.dtype} on {v.device} for x of {x.dtype} on "
                         f"{x.device}; compute it in x's dtype and on x's device")


def reverse(sde: SDE, score_fn: Callable, event_shape: Optional[Sequence[int]] = None,
            sde_type: str = "ito") -> ReverseSDE:
    r"""The reverse-time SDE of ``sde`` driven by ``score_fn(x, t)`` :math:`\approx \nabla\log p_t(x)`.

    **Arguments**

    - ``sde``: the forward :class:`sdekit.SDE`.
    - ``score_fn``: ``score_fn(x, t)``, ``x`` of shape ``(batch, *event_shape)``, ``t`` of shape ``(batch,)``.
    - ``event_shape``: the shape of one sample, needed only to hand the object to torchsde
      directly with a flattened state; :meth:`Process.solve` takes it from its input.
    - ``sde_type``: ``"ito"`` (default) or ``"stratonovich"``, as torchsde reads it.
    """
    return ReverseSDE(sde, score_fn, event_shape=event_shape, sde_type=sde_type)


def probability_flow(sde: SDE, score_fn: Callable, event_shape: Optional[Sequence[int]] = None) -> ProbabilityFlowODE:
    r"""The probability-flow ODE :math:`dx/dt = f - \tfrac12 g^2\,\mathrm{score\_fn}(x, t)` of ``sde``.

    Arguments as in :func:`reverse`.
    """
    return ProbabilityFlowODE(sde, score_fn, event_shape=event_shape)


def forward(sde: SDE, event_shape: Optional[Sequence[int]] = None, sde_type: str = "ito") -> ForwardSDE:
    """The forward SDE as a process from ``0`` to ``T``, solvable with any SDE method."""
    return ForwardSDE(sde, event_shape=event_shape, sde_type=sde_type)
