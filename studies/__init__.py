r"""sdekit.studies: the built-in study problems and the default study of ``sdekit study``.

They are made of :mod:`sdekit.validation`'s exact distributions, solutions and metrics, and so live beside
the core, as validation does (this folder installs as ``sdekit.studies``): the study engine in ``sdekit``
takes any problem through :class:`sdekit.StudyProblem`'s members and never imports validation; the
``sdekit`` command imports this module lazily, for its default problem.

- :class:`MixtureProblem`: the 2-D Gaussian mixture of ``GaussianMixture.default_2d`` under any linear SDE,
  with its exact score; exact samples of :math:`p_T` to start from and of :math:`p_\epsilon` to compare with:
  sliced W2 against its Monte Carlo floor, mode masses through the exact posterior, mean and covariance.
- :class:`GaussianProblem`: Gaussian data, whose probability flow is known exactly (ODE errors without a
  reference solve).
- :class:`ExactSDEProblem`: the exact-solution SDEs of ``sdekit.validation.exact_sdes()`` (Kloeden–Platen,
  Rackauckas–Nie), forward in time, whose strong solution given the Brownian path is known.
- :func:`trained_problem`: the problem of a model saved by ``sdekit train`` (:func:`train_score_model`,
  :func:`save_model`, :func:`load_model`, :class:`ScoreMLP`, :class:`ScoreUNet`), for ``sdekit study --model FILE``.
- :func:`digits`: scikit-learn's 8×8 digits, split and scaled; :class:`DigitsProblem`: the study problem of a
  digits model (the shipped one is ``load_model("digits")``), judged by a fine reference solve, a Fréchet
  distance in a classifier's features, the class balance and the likelihood.
"""

import torch

from sdekit import InvalidParameterError, Measure, StudyProblem, SubVPSDE, VESDE, VPSDE
from sdekit.validation import (GaussianData, GaussianMixture, exact_sdes, mean_cov_error, mode_masses,
                               monte_carlo_floor, sliced_wasserstein)

__all__ = ["MixtureProblem", "GaussianProblem", "ExactSDEProblem", "SDES", "DEFAULT_METHODS", "DEFAULT_BUDGETS",
           "default_problem", "run_orders", "ScoreMLP", "train_score_model", "save_model", "load_model",
           "trained_problem", "ScoreUNet", "digits", "DigitsProblem"]

SDES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}

#: ``sdekit study``'s methods: reverse-SDE samplers of torchsde and sdekit, and flow solvers of
#: torchdiffeq and sdekit (fixed and adaptive).
DEFAULT_METHODS = ["sde:torchsde.euler", "sde:euler_ancestral", "sde:dpmpp_2m_sde", "sde:ddim",
                   "ode:torchdiffeq.euler", "ode:ddim", "ode:dpmpp_2m", "ode:unipc", "ode:dopri5"]
#: Step counts for the fixed-step methods, tolerances for the adaptive ones.
DEFAULT_BUDGETS = "steps=4,8,16,32;tol=1e-2,1e-3,1e-4,1e-5"

#: Floor standard deviations a row's sliced W2 may exceed the floor's mean by; standard errors for masses, moments.
SW2_K, MODE_K, MOMENT_K = 3.0, 3.0, 4.0


class MixtureProblem(StudyProblem):
    """The default 2-D Gaussian mixture (weights 0.5/0.3/0.2) under ``sde`` with its exact score.

    ``floor_repeats`` pairs of exact sets give the sliced W2 floor for each sample size and seed.
    """

    def __init__(self, sde=None, floor_repeats: int = 8):
        sde = VPSDE() if sde is None else sde
        self.mixture = GaussianMixture.default_2d(sde)
        self.floor_repeats = int(floor_repeats)
        self._floors = {}
        super().__init__(sde, self.mixture.score, name=f"mixture-2d {type(sde).__name__}",
                         config=dict(floor_repeats=self.floor_repeats))

    def initial(self, n, generator):
        return self.mixture.sample(n, t=self.t_start, generator=generator).to(torch.float64)

    def exact_samples(self, n, generator):
        return self.mixture.sample(n, t=self.t_end, generator=generator)

    def density(self, x):
        return self.mixture.log_prob(x, self.t_end)

    def _draw(self, n, g):
        return self.mixture.sample(n, t=self.t_end, generator=g)

    def prepare(self, n, seed):
        if (n, seed) not in self._floors:
            self._floors[(n, seed)] = monte_carlo_floor(sliced_wasserstein, self._draw, n,
                                                        repeats=self.floor_repeats, seed=(seed + 100) % 2 ** 64)
        return self._floors[(n, seed)]

    def measures(self, x, exact, seed):
        floor = self.prepare(x.shape[0], seed)
        sw = sliced_wasserstein(x, exact, floor=floor)
        masses = mode_masses(x, self.mixture)
        mean, cov = self.mixture.moments_at(self.t_end)
        mc = mean_cov_error(x, mean, cov, standard_errors="empirical")
        return {
            "sw2": Measure(sw.value, floor=floor.mean, floor_std=floor.std, ok=sw.value <= sw.threshold(SW2_K)),
            "modes": Measure(masses.total_variation, z=masses.max_z, ok=masses.max_z <= MODE_K),
            "moments": Measure(mc.value, z=mc.max_z, ok=mc.max_z <= MOMENT_K),
        }


class GaussianProblem(StudyProblem):
    """Gaussian data ``N(mean, cov)`` under ``sde``: exact score, exact flow map, exact samples, moments."""

    def __init__(self, sde=None, mean=(1.0, -0.5), cov=((0.5, 0.2), (0.2, 2.0))):
        sde = VPSDE() if sde is None else sde
        self.data = GaussianData(list(mean), [list(r) for r in cov], sde)
        super().__init__(sde, self.data.score, name=f"gaussian-{len(mean)}d {type(sde).__name__}",
                         config=dict(mean=list(mean), cov=[list(r) for r in cov]))

    def initial(self, n, generator):
        return self.data.sample(n, t=self.t_start, generator=generator).to(torch.float64)

    def exact_samples(self, n, generator):
        return self.data.sample(n, t=self.t_end, generator=generator)

    def flow_map(self, x, t_start, t_end):
        return self.data.flow_map(x, t_start, t_end)

    def density(self, x):
        return self.data.log_prob(x, self.t_end)

    def measures(self, x, exact, seed):
        mean, cov = self.data.marginal(self.t_end)
        mc = mean_cov_error(x, mean, cov)
        return {"moments": Measure(mc.value, z=mc.max_z, ok=mc.max_z <= MOMENT_K)}


class ExactSDEProblem(StudyProblem):
    """A forward SDE of ``sdekit.validation.exact_sdes()`` by name (``"gbm"``, ``"arctan"``, ...) or an
    ``ExactSDE``; the strong reference is its exact solution on the row's Brownian path."""

    def __init__(self, problem="gbm"):
        name = problem if isinstance(problem, str) else type(problem).__name__
        if isinstance(problem, str):
            table = exact_sdes()
            if problem not in table:
                raise InvalidParameterError(f"no exact-solution SDE called {problem!r}; choose from {', '.join(table)}")
            problem = table[problem]
        self.exact_sde = problem
        super().__init__(problem, process="forward", name=name, noise=problem.noise, config=dict(sde=repr(problem)))

    def initial(self, n, generator):
        return self.exact_sde.initial_state(n, dtype=torch.float64)

    def exact_solution(self, x0, noise):
        T = self.exact_sde.T
        if self.exact_sde.needs_time_integral:
            w, u = noise(0.0, T, return_U=True)
        else:
            w, u = noise(0.0, T), None
        return self.exact_sde.exact(x0, T, w.view_as(x0), None if u is None else u.view_as(x0))


def default_problem(sde: str = "vp") -> MixtureProblem:
    """``sdekit study``'s problem: the 2-D mixture under ``"vp"``, ``"subvp"`` or ``"ve"``."""
    return MixtureProblem(SDES[sde]())


def run_orders(argv) -> int:
    """``python -m sdekit.validation.orders`` with ``argv``: the order table of docs/orders.md."""
    from sdekit.validation import orders
    return int(orders.main(argv) or 0)


from ._trained import ScoreMLP, load_model, save_model, train_score_model, trained_problem  # noqa: E402
from ._unet import ScoreUNet  # noqa: E402
from ._digits import digits  # noqa: E402
from ._digits_problem import DigitsProblem  # noqa: E402
