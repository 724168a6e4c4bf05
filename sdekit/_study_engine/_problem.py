r"""What a study solves: a :class:`StudyProblem` and the :class:`Measure` its errors come back as.

A problem is an SDE, a score function, an initial distribution and whatever reference it has:

- ``exact_solution(x0, noise)``: the exact end state given the torchsde Brownian motion that drove the
  solve (an SDE with a known strong solution);
- ``flow_map(x, t_start, t_end)``: the exact probability-flow map;
- ``exact_samples(n, generator)``: exact samples of the law at ``t_end``;
- ``measures(x, exact, seed)``: distributional errors of samples ``x`` against ``exact`` (a dict of
  :class:`Measure`, each with its standard error or its Monte Carlo floor).

Where a problem has no exact solution the study's reference is a fine solve on the same Brownian path.
The study engine only ever calls these members, so any object that has them (a subclass, or a
:class:`StudyProblem` built from callables) is a problem.
"""

import hashlib
import math
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch

from .._errors import ArgumentTypeError, InvalidParameterError
from .._process import forward, probability_flow, reverse
from .._sde import SDE

__all__ = ["StudyProblem", "Measure"]

#: A 95% interval is ``value ± Z95 * se``.
Z95 = 1.959963984540054


@dataclass(frozen=True)
class Measure:
    """One error measure of one row.

    - ``value``: the measured error;
    - ``se``: its Monte Carlo standard error (the interval is ``value ± 1.96 se``), or ``None``;
    - ``floor``, ``floor_std``: for a distance between sample sets, the same distance between independent
      exact sets of the same size (mean and spread over several pairs): a correct sampler lands there;
    - ``z``: the largest ``|error / se|`` of a vector of quantities (mode masses, moments), or ``None``;
    - ``ok``: whether the row passes this measure's test (``None`` where it has none).
    """

    value: float
    se: Optional[float] = None
    floor: Optional[float] = None
    floor_std: Optional[float] = None
    z: Optional[float] = None
    ok: Optional[bool] = None

    @property
    def interval(self):
        """The 95% Monte Carlo interval ``(lo, hi)``; ``(value, value)`` without a standard error."""
        if self.se is None:
            return self.value, self.value
        return self.value - Z95 * self.se, self.value + Z95 * self.se

    def fields(self, name: str) -> dict:
        """The row's columns for this measure: ``name``, ``name_se``, ``name_lo``, ``name_hi`` and the rest."""
        lo, hi = self.interval
        out = {name: self.value, f"{name}_se": self.se, f"{name}_lo": lo, f"{name}_hi": hi}
        for key in ("floor", "floor_std", "z", "ok"):
            if getattr(self, key) is not None:
                out[f"{name}_{key}"] = getattr(self, key)
        return out


def mean_with_se(per_sample: torch.Tensor) -> Measure:
    """The mean of per-sample values with its standard error ``std / sqrt(n)``."""
    v = per_sample.detach().to(torch.float64).reshape(-1)
    n = v.numel()
    se = float(v.std() / math.sqrt(n)) if n > 1 else None
    return Measure(float(v.mean()), se)


class StudyProblem:
    r"""A problem for :func:`sdekit.study`: an SDE, a score, initial samples and a reference.

    **Arguments**

    - ``sde``: an :class:`sdekit.SDE`.
    - ``score``: ``score(x, t)``; ``None`` for a forward SDE of its own (``process="forward"``).
    - ``initial``: ``initial(n, generator)`` returning ``n`` initial states ``(n, *event_shape)``; default
      ``sde.prior_sampling`` with ``event_shape``.
    - ``name``: a label (it is part of the results' configuration hash).
    - ``process``: what SDE methods solve: ``"reverse"`` (default) or ``"forward"``; ODE methods always solve
      the probability flow.
    - ``t_start``, ``t_end``: the span (default the process's own).
    - ``event_shape``: the shape of one sample, for the default ``initial``.
    - ``exact_solution``, ``flow_map``, ``exact_samples``, ``measures``, ``density``: references (see the
      module's docstring); ``density(x)`` is the log-density at ``t_end``, for the 2-D sample plots.
    - ``test_functions``: ``{name: phi}`` with ``phi(x)`` of shape ``(n,)``, for weak errors (default
      :math:`|x|^2`, named ``"sqnorm"``).
    - ``noise``: ``"additive"`` or ``"diagonal"``: which strong order of a method to expect (default: additive
      for a reverse SDE of an SDE whose ``g`` ignores ``x``).
    - ``config``: a JSON-able dict describing anything else that changes results (hashed with the rows).
    - ``score_dtype``: the dtype ``score`` computes in, for a network trained in float32: states and times are
      cast to it and the score back to the states' dtype (the references and the fingerprint run in float64,
      the rows in the study's dtype).  Default ``None``: the score takes the states as they come.
    """

    exact_solution: Optional[Callable] = None
    flow_map: Optional[Callable] = None
    exact_samples: Optional[Callable] = None
    measures: Optional[Callable] = None
    density: Optional[Callable] = None

    def __init__(self, sde: SDE, score: Optional[Callable] = None, initial: Optional[Callable] = None, *,
                 name: str = "problem", process: str = "reverse", t_start: Optional[float] = None,
                 t_end: Optional[float] = None, event_shape=(2,), exact_solution: Optional[Callable] = None,
                 flow_map: Optional[Callable] = None, exact_samples: Optional[Callable] = None,
                 measures: Optional[Callable] = None, density: Optional[Callable] = None,
                 test_functions: Optional[Dict[str, Callable]] = None, noise: Optional[str] = None,
                 config: Optional[dict] = None, score_dtype: Optional[torch.dtype] = None):
        if not isinstance(sde, SDE):
            raise ArgumentTypeError(f"sde must be an sdekit.SDE (VPSDE(), VESDE(), ...), got {type(sde).__name__}")
        if process not in ("reverse", "forward"):
            raise InvalidParameterError(f"process must be 'reverse' or 'forward', got {process!r}")
        if process == "reverse" and not callable(score):
            raise ArgumentTypeError("a reverse-SDE problem needs score=score_fn(x, t); give one, or process='forward'")
        for key, fn in dict(initial=initial, exact_solution=exact_solution, flow_map=flow_map,
                            exact_samples=exact_samples, measures=measures, density=density).items():
            if fn is not None and not callable(fn):
                raise ArgumentTypeError(f"{key} must be callable, got {type(fn).__name__}")
        if score_dtype is not None and not (isinstance(score_dtype, torch.dtype) and score_dtype.is_floating_point):
            raise ArgumentTypeError(f"score_dtype must be a floating torch dtype (torch.float32), got {score_dtype!r}")
        if score_dtype is not None and score is not None:
            score = CastScore(score, score_dtype)
        self.score_dtype = score_dtype
        self.sde, self.score, self.name, self.process = sde, score, str(name), process
        self.event_shape = tuple(int(n) for n in event_shape)
        self._initial = initial
        for key, fn in dict(exact_solution=exact_solution, flow_map=flow_map, exact_samples=exact_samples,
                            measures=measures, density=density).items():
            if fn is not None:          # a subclass may define these as methods instead
                setattr(self, key, fn)
        self.test_functions = dict(test_functions) if test_functions else {"sqnorm": _square_norm}
        lo, hi = ((0.0, sde.T) if process == "forward" else (sde.T, sde.eps))
        self.t_start = lo if t_start is None else float(t_start)
        self.t_end = hi if t_end is None else float(t_end)
        self.noise = noise
        self.config = dict(config or {})

    # -- what the engine calls --------------------------------------------------------------
    def initial(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` initial states, float64 on the CPU."""
        if self._initial is not None:
            x = self._initial(n, generator)
        else:
            x = self.sde.prior_sampling((n,) + self.event_shape, generator=generator, dtype=torch.float64)
        return x.to(torch.float64)

    def sde_process(self):
        """The SDE that SDE methods solve: the reverse SDE with the score, or the forward SDE."""
        return reverse(self.sde, self.score) if self.process == "reverse" else forward(self.sde)

    def ode_process(self):
        """The probability-flow ODE (``None`` for a forward problem)."""
        return probability_flow(self.sde, self.score) if self.process == "reverse" else None

    def prepare(self, n: int, seed: int) -> None:
        """Compute what ``measures`` needs for sample size ``n`` and ``seed`` (floors) once, before rows run."""

    def noise_kind(self) -> str:
        """``"additive"`` or ``"diagonal"``: the noise class that picks a method's strong order."""
        if self.noise is not None:
            return self.noise
        x = self.initial(2, torch.Generator().manual_seed(0))
        t = torch.full((2,), self.t_start, dtype=torch.float64)
        return "diagonal" if self.sde_process().diffusion_depends_on_x(t, x) else "additive"

    def fingerprint(self) -> dict:
        """What identifies the problem in a results file: its name, config, span and a digest of its numbers
        (initial states and the drift at ``t_start`` on probe points), so an edited score is a new problem."""
        g = torch.Generator().manual_seed(20240611)
        x = self.initial(4, g)
        t = torch.full((4,), self.t_start, dtype=torch.float64)
        with torch.no_grad():
            parts = [x, self.sde_process().drift(t, x)]
            if self.process == "reverse":
                parts.append(self.score(x, torch.full((4,), 0.5 * (self.t_start + self.t_end), dtype=torch.float64)))
        text = ";".join(",".join(f"{v:.9g}" for v in p.reshape(-1).tolist()) for p in parts)
        out = dict(name=self.name, sde=repr(self.sde), process=self.process, span=[self.t_start, self.t_end],
                   config=self.config, digest=hashlib.sha256(text.encode()).hexdigest()[:16])
        if getattr(self, "score_dtype", None) is not None:       # only then: float64 scores keep their hashes
            out["score_dtype"] = str(self.score_dtype).replace("torch.", "")
        return out

    def __repr__(self):
        refs = [k for k in ("exact_solution", "flow_map", "exact_samples", "measures") if getattr(self, k) is not None]
        return f"StudyProblem({self.name!r}, {self.sde!r}, {self.process}, references: {', '.join(refs) or 'none'})"


class CastScore:
    """``score`` evaluated in ``dtype`` (a float32 network): states and times are cast to it, its output back to
    the states' dtype; ``nfe_per_call`` is the score's."""

    def __init__(self, score: Callable, dtype: torch.dtype):
        self.score, self.dtype = score, dtype
        self.__name__ = getattr(score, "__name__", type(score).__name__)
        if hasattr(score, "nfe_per_call"):
            self.nfe_per_call = score.nfe_per_call

    def __call__(self, x, t):
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != self.dtype:
            t = t.to(self.dtype)
        if x.dtype == self.dtype:
            return self.score(x, t)
        out = self.score(x.to(self.dtype), t)
        return out.to(x.dtype) if isinstance(out, torch.Tensor) else out

    def __repr__(self):
        return f"CastScore({self.score!r}, {self.dtype})"


def _square_norm(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).pow(2).sum(1)
