"""Hardening of the core (red-team report on landed main): strict option values, close-match suggestions for
misspelt methods and options, samplers for any LinearSDE (numerical moments), the one-time threads hint, and
the docs saying what the code does.
"""

import math
import pickle
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import sdekit
import sdekit._solve as solve_module
from sdekit import InvalidParameterError, LinearSDE, MethodArgumentError, UnknownMethodError
from sdekit._stepping import ADAPTIVE_STEPPERS, STEPPERS
from sdekit.validation import GaussianMixture

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64
ROOT = Path(__file__).resolve().parents[1]


def _score(x, t):
    return -x


def _x(n=4, d=2):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(0), dtype=F64)


def _solve_with(cls, options, process_sde=None):
    """Solve a tiny problem with the sdekit stepper ``cls`` and ``options`` (errors come from its option checks)."""
    sde = process_sde or sdekit.VPSDE()
    name = f"sdekit.{cls.name}"
    stochastic = cls.kind == "sde" and not getattr(cls, "deterministic_on_ode", False)
    proc = (sdekit.reverse if stochastic else sdekit.probability_flow)(sde, _score)
    adaptive = cls in ADAPTIVE_STEPPERS
    stepping = dict(rtol=1e-2, atol=1e-2) if adaptive else dict(steps=3)
    return proc.solve(_x(), method=name, options=options, seed=0, **stepping)


# ---------------------------------------------------------------------------------------------
# 1. option values are checked, never coerced
# ---------------------------------------------------------------------------------------------

BOOL_OPTIONS = [(cls, key) for cls in STEPPERS + ADAPTIVE_STEPPERS for key, v in cls.defaults.items()
                if isinstance(v, bool)]


def test_every_boolean_option_is_found():
    assert {(c.name, k) for c, k in BOOL_OPTIONS} >= {("dpmpp_2m", "lower_order_final"), ("dpmpp_3m", "lower_order_final"),
                                                     ("unipc", "lower_order_final"), ("deis", "lower_order_final")}


@pytest.mark.parametrize("cls, key", BOOL_OPTIONS, ids=[f"{c.name}-{k}" for c, k in BOOL_OPTIONS])
@pytest.mark.parametrize("value", ["no", "False", 0, 1, None, 1.0])
def test_boolean_options_take_only_true_or_false(cls, key, value):
    """Was: lower_order_final="no" read as True (bool("no")), silently."""
    with pytest.raises(InvalidParameterError, match=f"option {key} must be True or False"):
        _solve_with(cls, {key: value})


@pytest.mark.parametrize("cls, key", BOOL_OPTIONS, ids=[f"{c.name}-{k}" for c, k in BOOL_OPTIONS])
def test_boolean_options_take_true_false_and_numpy_bools(cls, key):
    for value in (True, False, np.bool_(False)):
        assert _solve_with(cls, {key: value}).success


def test_lower_order_final_false_changes_the_result_and_true_is_the_default():
    """The option is read, not ignored: False keeps the full order on the last steps of a short grid."""
    default = _solve_with(STEPPERS[[c.name for c in STEPPERS].index("dpmpp_3m")], {})
    on = _solve_with(STEPPERS[[c.name for c in STEPPERS].index("dpmpp_3m")], {"lower_order_final": True})
    off = _solve_with(STEPPERS[[c.name for c in STEPPERS].index("dpmpp_3m")], {"lower_order_final": False})
    assert torch.equal(default.x, on.x) and not torch.equal(on.x, off.x)


@pytest.mark.parametrize("denoise", ["yes", 1, None])
def test_the_loops_denoise_option_takes_only_true_or_false(denoise):
    with pytest.raises(InvalidParameterError, match="denoise must be True or False"):
        _solve_with(STEPPERS[0], {"denoise": denoise})


NUMBER_OPTIONS = [(cls, key, v) for cls in STEPPERS + ADAPTIVE_STEPPERS for key, v in cls.defaults.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool)]


@pytest.mark.parametrize("cls, key, default", NUMBER_OPTIONS, ids=[f"{c.name}-{k}" for c, k, _ in NUMBER_OPTIONS])
def test_number_options_refuse_strings(cls, key, default):
    """A number given as a string ("4", "0.5") is refused with a one-line error, never parsed."""
    with pytest.raises(sdekit.SDEKitError) as info:
        _solve_with(cls, {key: str(default)})
    assert key in str(info.value) and "\n" not in str(info.value)


CHOICE_OPTIONS = [(cls, key) for cls in STEPPERS + ADAPTIVE_STEPPERS for key, v in cls.defaults.items()
                  if isinstance(v, str)]


@pytest.mark.parametrize("cls, key", CHOICE_OPTIONS, ids=[f"{c.name}-{k}" for c, k in CHOICE_OPTIONS])
@pytest.mark.parametrize("value", ["nonsense", ["list"], torch.zeros(2)])
def test_choice_options_refuse_anything_but_their_names(cls, key, value):
    with pytest.raises(InvalidParameterError, match=key):
        _solve_with(cls, {key: value})


def test_choice_options_suggest_the_close_name():
    unipc = STEPPERS[[c.name for c in STEPPERS].index("unipc")]
    with pytest.raises(InvalidParameterError, match=r"did you mean 'bh2'"):
        _solve_with(unipc, {"variant": "BH-2"})


def test_integer_options_take_numpy_integers_but_not_floats():
    ipndm = STEPPERS[[c.name for c in STEPPERS].index("ipndm")]
    a = _solve_with(ipndm, {"order": np.int64(2)})
    b = _solve_with(ipndm, {"order": 2})
    assert torch.equal(a.x, b.x)
    with pytest.raises(InvalidParameterError, match="order must be an integer"):
        _solve_with(ipndm, {"order": 2.0})


# ---------------------------------------------------------------------------------------------
# 2. a misspelt method gets the close names first
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, close", [("dpm++2m", "dpmpp_2m"), ("DPM++ 2M", "dpmpp_2m"),
                                         ("Euler-Ancestral", "euler_ancestral"), ("dpmpp2m_sde", "dpmpp_2m_sde"),
                                         ("unipcc", "unipc"), ("torchsde.eulr", "torchsde.euler")])
def test_unknown_method_suggests_the_closest_names_first(name, close):
    with pytest.raises(UnknownMethodError) as info:
        sdekit.probability_flow(sdekit.VPSDE(), _score).solve(_x(), method=name, steps=2)
    msg = str(info.value)
    assert "\n" not in msg
    hint, _, rest = msg.partition("valid methods:")
    assert f"did you mean '{close}'" in hint and rest.strip()          # the suggestion, then the full list


def test_unknown_method_far_from_every_name_gets_the_list_alone():
    with pytest.raises(UnknownMethodError) as info:
        sdekit.probability_flow(sdekit.VPSDE(), _score).solve(_x(), method="qqqqqq", steps=2)
    assert "did you mean" not in str(info.value) and "dpmpp_2m" in str(info.value)


# ---------------------------------------------------------------------------------------------
# 3. an unknown option lists every option the method takes, the loop's included, with a suggestion
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", STEPPERS + ADAPTIVE_STEPPERS, ids=[c.name for c in STEPPERS + ADAPTIVE_STEPPERS])
def test_unknown_option_lists_the_loops_options_too(cls):
    loop = ("denoise", "sync_every") if cls in ADAPTIVE_STEPPERS else ("denoise", "hook")
    with pytest.raises(MethodArgumentError) as info:
        _solve_with(cls, {"bogus_option": 1})
    msg = str(info.value)
    takes = msg.split("it takes: ")[1].split(", ")
    assert set(takes) == set(cls.defaults) | set(loop) and "\n" not in msg


@pytest.mark.parametrize("cls", STEPPERS, ids=[c.name for c in STEPPERS])
def test_a_stepper_built_directly_lists_the_loops_options(cls):
    """The stepper's own check (the loop pops denoise/hook first, so it never saw them) names them as well."""
    with pytest.raises(MethodArgumentError, match=r"it takes: .*denoise, hook$"):
        cls(None, None, {"bogus": 1})


@pytest.mark.parametrize("method, typo, meant", [("dpmpp_2m", "lower_order_fnal", "lower_order_final"),
                                                 ("dpmpp_2m", "denoice", "denoise"), ("ddim", "hok", "hook"),
                                                 ("pc", "n_step", "n_steps"), ("dpm_adaptive", "sync_evry", "sync_every")])
def test_misspelt_option_gets_a_close_match(method, typo, meant):
    cls = {c.name: c for c in STEPPERS + ADAPTIVE_STEPPERS}[method]
    with pytest.raises(MethodArgumentError, match=rf"'{typo}' \(did you mean '{meant}'\?\); it takes: "):
        _solve_with(cls, {typo: 1})


def test_misspelt_option_of_another_backend_gets_a_close_match():
    with pytest.raises(MethodArgumentError, match=r"dopri5 \(torchdiffeq\) .*'max_stp' \(did you mean 'max_step'"):
        sdekit.probability_flow(sdekit.VPSDE(), _score).solve(_x(), method="dopri5", options={"max_stp": 0.1})


# ---------------------------------------------------------------------------------------------
# 4. any LinearSDE samples: numerical moments
# ---------------------------------------------------------------------------------------------

class VPByCoefficients(LinearSDE):
    """The VP SDE re-declared by its coefficients alone: no log_alpha, sigma or t_of_log_snr."""

    def __init__(self, beta_min=0.1, beta_max=20.0, T=1.0, eps=1e-3):
        super().__init__(T=T, eps=eps)
        self.b0, self.b1 = beta_min, beta_max

    def drift_coef(self, t):
        return -0.5 * (self.b0 + t * (self.b1 - self.b0))

    def diffusion_coef(self, t):
        return torch.sqrt(self.b0 + t * (self.b1 - self.b0))


class SubVPByCoefficients(VPByCoefficients):
    def diffusion_coef(self, t):
        log_alpha = -0.25 * t ** 2 * (self.b1 - self.b0) - 0.5 * t * self.b0
        return torch.sqrt((self.b0 + t * (self.b1 - self.b0)) * -torch.expm1(4 * log_alpha))


class VEByCoefficients(LinearSDE):
    """VE by its coefficients, with the reference marginal's initial sigma (or the exact one's, 0)."""

    def __init__(self, sigma_min=0.01, sigma_max=50.0, reference=True):
        super().__init__(T=1.0, eps=1e-5)
        self.sigma_min, self.r = sigma_min, math.log(sigma_max / sigma_min)
        self.initial_sigma = sigma_min if reference else 0.0
        self.prior_std = sigma_max

    def drift_coef(self, t):
        return torch.zeros_like(t)

    def diffusion_coef(self, t):
        return self.sigma_min * torch.exp(t * self.r) * math.sqrt(2 * self.r)


PAIRS = {
    "vp": (VPByCoefficients, sdekit.VPSDE),
    "subvp": (SubVPByCoefficients, sdekit.SubVPSDE),
    "ve": (VEByCoefficients, sdekit.VESDE),
    "ve-exact": (lambda: VEByCoefficients(reference=False), lambda: sdekit.VESDE(marginal="exact")),
}


@pytest.mark.parametrize("kind", sorted(PAIRS))
def test_numerical_moments_match_the_closed_forms(kind):
    """log alpha, sigma and lambda from the coefficients alone agree with the closed forms to ~1e-14 (measured
    <= 2e-15), near t = 0 too, and the inverse round-trips."""
    num, ref = (make() for make in PAIRS[kind])
    t = torch.cat([torch.tensor([1e-12, 1e-9, 1e-6, 1e-5], dtype=F64), torch.linspace(1e-3, 1.0, 301, dtype=F64)])
    log_alpha, sigma = num.log_alpha_sigma(t)
    assert torch.allclose(log_alpha, ref.log_alpha(t), rtol=0, atol=1e-13)
    assert float(((sigma - ref.sigma(t)) / ref.sigma(t)).abs().max()) < 1e-12
    assert torch.allclose(num.log_snr(t), ref.log_snr(t), rtol=0, atol=1e-12)
    lam = ref.log_snr(t[4:])
    assert float(((num.t_of_log_snr(lam) - t[4:]) / t[4:]).abs().max()) < 1e-11
    assert num.log_alpha_sigma(t.float())[1].dtype == torch.float32        # the query's dtype


@pytest.mark.parametrize("kind", sorted(PAIRS))
def test_schedules_of_an_sde_given_by_coefficients(kind):
    num, ref = (make() for make in PAIRS[kind])
    for grid in (sdekit.log_snr_grid, sdekit.karras_grid):
        assert torch.allclose(grid(num, 12), grid(ref, 12), rtol=1e-12, atol=1e-15)


# 10 steps at most, exact mixture score of the closed-form SDE (the same process): the two runs differ only by the
# moments, which agree to ~1e-15, and the samplers propagate that with a gain of at most ~1e3 (measured differences
# 1e-13 to 1e-12 on states of size ~5).  1e-9 keeps three orders of margin yet fails for any moment error above
# ~1e-9 (a dropped initial sigma, a first-order quadrature, a wrong Newton root).  Stochastic samplers read the
# keyed noise by the step's time, so they run on one grid (the numerical SDE's own) for both: a grid differing by
# one ulp may cross a keyed-noise bucket edge (VE's log-SNR grid is linear in t and lands on dyadic edges).
SAMPLERS = [("dpmpp_2m", "flow"), ("ddim", "flow"), ("dpm_solver_3", "flow"), ("edm_heun", "flow"),
            ("euler_ancestral", "reverse"), ("ddim", "reverse"), ("restart", "reverse"), ("pc", "reverse")]


@pytest.mark.parametrize("kind", ["vp", "ve"])
@pytest.mark.parametrize("method, process", SAMPLERS, ids=[f"{m}-{p}" for m, p in SAMPLERS])
def test_samplers_on_an_sde_given_by_coefficients_agree_with_its_closed_form(kind, method, process):
    """Was: "log_snr_grid needs closed-form log_alpha(t) and sigma(t)" for a LinearSDE that passes check_sde."""
    num, ref = (make() for make in PAIRS[kind])
    score = GaussianMixture.default_2d(ref).score
    x = ref.prior_sampling((256, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    make = sdekit.probability_flow if process == "flow" else sdekit.reverse
    if process == "flow":
        a = make(ref, score).solve(x, method=method, steps=10, schedule="logsnr", options=dict(denoise=True))
        b = make(num, score).solve(x, method=method, steps=10, schedule="logsnr", options=dict(denoise=True))
    else:
        grid = sdekit.log_snr_grid(num, 10)
        a = make(ref, score).solve(x, method=method, grid=grid, seed=3, options=dict(denoise=True))
        b = make(num, score).solve(x, method=method, grid=grid, seed=3, options=dict(denoise=True))
    assert a.nfe == b.nfe
    assert float((a.x - b.x).abs().max()) < 1e-9


def test_adaptive_log_snr_sampler_on_an_sde_given_by_coefficients():
    num, ref = VPByCoefficients(), sdekit.VPSDE()
    score = GaussianMixture.default_2d(ref).score
    x = ref.prior_sampling((64, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    a = sdekit.probability_flow(ref, score).solve(x, method="dpm_adaptive", rtol=1e-3, atol=1e-3)
    b = sdekit.probability_flow(num, score).solve(x, method="dpm_adaptive", rtol=1e-3, atol=1e-3)
    # per-sample step sizes: accept/reject decisions follow the moments continuously; measured 4e-8
    assert float((a.x - b.x).abs().max()) < 1e-6


def test_an_sde_given_by_coefficients_samples_the_data():
    """Not only like its closed form: dpmpp_2m on the mixture lands on the exact mode masses."""
    from sdekit.validation import mode_masses
    sde = VPByCoefficients()
    mix = GaussianMixture.default_2d(sdekit.VPSDE())
    x = mix.sample(4000, t=sde.T, generator=torch.Generator().manual_seed(1))
    sol = sdekit.probability_flow(sde, mix.score).solve(x, method="dpmpp_2m", steps=20)
    assert mode_masses(sol.x, mix).max_z < 4


def test_a_linear_sde_with_neither_closed_forms_nor_coefficients_is_refused_in_one_line():
    class Nothing(LinearSDE):
        pass

    with pytest.raises(InvalidParameterError, match=r"Nothing defines neither closed-form log_alpha\(t\) and "
                                                    r"sigma\(t\) nor drift_coef\(t\) and diffusion_coef\(t\)"):
        sdekit.probability_flow(Nothing(), _score).solve(_x(), method="dpmpp_2m", steps=4)


def test_rough_coefficients_are_refused_not_integrated_badly():
    class Jump(LinearSDE):
        def drift_coef(self, t):
            return torch.where(t < 1 / 3, -0.5, -8.0) * torch.ones_like(t)

        def diffusion_coef(self, t):
            return torch.ones_like(t)

    with pytest.raises(InvalidParameterError, match="too rough"):
        Jump().log_snr(torch.tensor([0.5], dtype=F64))


def test_non_finite_coefficients_are_refused():
    class Singular(VPByCoefficients):
        def drift_coef(self, t):
            return -1 / t

    with pytest.raises(InvalidParameterError, match=r"drift_coef\(t\) is not finite"):
        Singular().log_snr(torch.tensor([0.5], dtype=F64))


def test_numerical_moments_follow_a_change_of_the_coefficients():
    sde = VPByCoefficients()
    t = torch.tensor([0.5], dtype=F64)
    before = sde.log_snr(t)
    sde.b1 = 10.0
    assert torch.allclose(sde.log_snr(t), sdekit.VPSDE(beta_max=10.0).log_snr(t), rtol=0, atol=1e-12)
    assert not torch.allclose(before, sde.log_snr(t))


def test_an_sde_given_by_coefficients_pickles_with_its_moments():
    sde = VPByCoefficients()
    t = torch.linspace(0.01, 1, 7, dtype=F64)
    lam = sde.log_snr(t)
    back = pickle.loads(pickle.dumps(sde))
    assert torch.equal(back.log_snr(t), lam)


def test_closed_forms_still_required_by_the_closed_form_api():
    """log_alpha/sigma/marginal_prob stay closed-form only: check_sde then simulates against the moment ODEs."""
    sde = VPByCoefficients()
    t = torch.tensor([0.5], dtype=F64)
    with pytest.raises(NotImplementedError):
        sde.log_alpha(t)
    with pytest.raises(NotImplementedError):
        sde.marginal_prob(torch.zeros(1, 2, dtype=F64), t)


# ---------------------------------------------------------------------------------------------
# 5. the one-time hint about torch's threads
# ---------------------------------------------------------------------------------------------

def _hint_warnings(x, runs=2):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(runs):
            sdekit.probability_flow(sdekit.VPSDE(), _score).solve(x, method="ddim", steps=1)
    return [w for w in caught if "set_num_threads(1)" in str(w.message)]


@pytest.fixture
def threads():
    """Run with a chosen torch thread count, the hint not yet shown; both restored afterwards."""
    before = torch.get_num_threads()
    shown = solve_module._THREADS_HINT_SHOWN
    solve_module._THREADS_HINT_SHOWN = False

    def use(n):
        torch.set_num_threads(n)
    try:
        yield use
    finally:
        torch.set_num_threads(before)
        solve_module._THREADS_HINT_SHOWN = shown


def test_small_cpu_state_with_several_threads_is_told_once(threads):
    threads(2)
    hints = _hint_warnings(_x(), runs=3)
    assert len(hints) == 1 and hints[0].category is UserWarning
    assert Path(hints[0].filename).resolve() == Path(__file__).resolve()   # points at the caller, not at sdekit
    assert torch.get_num_threads() == 2                                      # told, never changed
    assert len(_hint_warnings(_x())) == 0                                    # once per process


def test_no_hint_on_one_thread_or_for_a_large_state(threads):
    threads(1)
    assert _hint_warnings(_x()) == []
    threads(2)
    big = torch.zeros(solve_module.SMALL_STATE, 1, dtype=torch.float32)
    assert _hint_warnings(big, runs=1) == []
    assert not solve_module._THREADS_HINT_SHOWN


def test_the_hint_threshold_is_the_clis():
    from sdekit._commands._common import SMALL_STATE
    assert solve_module.SMALL_STATE == SMALL_STATE == 1 << 16


# ---------------------------------------------------------------------------------------------
# 6. the docs say what the code does
# ---------------------------------------------------------------------------------------------

def test_docs_give_the_ve_reference_marginal_as_the_default():
    sde = sdekit.VESDE()
    t = torch.linspace(1e-5, 1, 11, dtype=F64)
    assert sde.marginal == "reference" and torch.equal(sde.sigma(t), sde.noise_level(t))
    conventions = (ROOT / "docs" / "conventions.md").read_text()
    section = conventions.split("## The VE marginal")[1].split("\n## ")[0]
    assert '`marginal="reference"` (default' in section and "give the exact transition law" not in section
    sde_md = (ROOT / "docs" / "sde.md").read_text()
    row = next(line for line in sde_md.splitlines() if line.startswith("| `VESDE("))
    assert "(default)" in row.split("|")[5] and "sigma_r(t)$ (default)" in row


def test_validation_docs_describe_the_current_demo():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:.*\n\t\$\(VENV\)/bin/sdekit study$", makefile, re.M)
    text = (ROOT / "docs" / "validation.md").read_text()
    assert "`make demo` runs `sdekit study`" in text
    from sdekit.validation import demo
    for _, method, opts in demo.RUNS:       # the backend demo's rows, as the page lists them
        label = {"euler": "Euler", "heun": "Heun", "srk": "SRK", "rk4": "RK4", "dopri5": "dopri5", "RK45": "RK45"}
        assert label[method] in text
