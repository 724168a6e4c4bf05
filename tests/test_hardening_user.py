"""A new user's inputs: SDE arguments, a user's own SDE (g(t), wrong shapes), pickling of processes."""

import pickle
import warnings

import pytest
import torch

import sdekit

pytestmark = pytest.mark.usefixtures("single_thread")


# ---------------------------------------------------------------------------------------------
# SDE constructor arguments
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [dict(beta_min=[0.1]), dict(beta_max="20"), dict(beta_min=torch.ones(2)),
                                dict(T=[1.0]), dict(eps="1e-3"), dict(beta_max=None), dict(beta_min=True)])
def test_vp_arguments_of_the_wrong_type_are_refused(kw):
    for cls in (sdekit.VPSDE, sdekit.SubVPSDE):
        with pytest.raises(sdekit.ArgumentTypeError, match=f"{next(iter(kw))} must be a real number") as info:
            cls(**kw)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("kw", [dict(sigma_min=[0.1]), dict(sigma_max="5"), dict(sigma_min=None), dict(T="1")])
def test_ve_arguments_of_the_wrong_type_are_refused(kw):
    with pytest.raises(sdekit.ArgumentTypeError, match=f"{next(iter(kw))} must be a real number"):
        sdekit.VESDE(**kw)


def test_vp_arguments_accept_numbers_and_scalar_tensors():
    np = pytest.importorskip("numpy")
    sde = sdekit.VPSDE(beta_min=np.float32(0.25), beta_max=torch.tensor(10.0), T=2, eps=torch.tensor(1e-3))
    assert (sde.beta_min, sde.beta_max, sde.T) == (0.25, 10.0, 2.0)
    assert isinstance(sde.eps, float)


def test_sde_base_arguments_of_the_wrong_type_are_refused():
    with pytest.raises(sdekit.ArgumentTypeError, match="T must be a real number"):
        sdekit.SDE(T="1")
    with pytest.raises(sdekit.InvalidParameterError, match="beta_min must be finite|finite"):
        sdekit.VPSDE(beta_min=float("nan"))


# ---------------------------------------------------------------------------------------------
# A user's own SDE
# ---------------------------------------------------------------------------------------------

class _OU(sdekit.SDE):
    """dx = -x dt + sqrt(2) dw with g written as g(t): only t."""

    def f(self, t, x):
        return -x

    def g(self, t):
        return torch.full_like(t, 2.0 ** 0.5)


class _Custom(sdekit.SDE):
    """An SDE whose f and g return what the test asks for."""

    def __init__(self, f=None, g=None):
        super().__init__()
        self._f, self._g = f, g

    def f(self, t, x):
        return -x if self._f is None else self._f(t, x)

    def g(self, t, x):
        return torch.ones_like(t) if self._g is None else self._g(t, x)


def _score(x, t):
    return -x


@pytest.mark.parametrize("kind", ["reverse", "flow", "forward"])
def test_diffusion_of_t_alone_works(kind):
    sde = _OU()
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    proc = {"reverse": lambda: sdekit.reverse(sde, _score), "flow": lambda: sdekit.probability_flow(sde, _score),
            "forward": lambda: sdekit.forward(sde)}[kind]()
    sol = proc.solve(x, method="euler", steps=20, seed=0)
    assert sol.success and torch.isfinite(sol.x).all()
    if kind == "forward":   # OU from N(0, I) stays N(0, I): the g(t) path really carries noise
        assert sol.x.std().item() == pytest.approx(1.0, abs=0.35)


def test_diffusion_of_t_alone_is_not_x_dependent_and_matches_g_of_t_x():
    class OUtx(_OU):
        def g(self, t, x):
            return torch.full_like(t, 2.0 ** 0.5)
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    a = sdekit.reverse(_OU(), _score).solve(x, method="euler", steps=10, seed=3).x
    b = sdekit.reverse(OUtx(), _score).solve(x, method="euler", steps=10, seed=3).x
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert sdekit.reverse(_OU(), _score).diffusion_depends_on_x(torch.ones(2), torch.ones(2, 3)) is False


@pytest.mark.parametrize("const", [0.7, torch.tensor(0.7, dtype=torch.float64), torch.tensor(0.7)])
@pytest.mark.parametrize("method", ["euler", "srk", "heun"])
def test_constant_diffusion_as_a_number_is_broadcast(const, method):
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ref = sdekit.reverse(_Custom(g=lambda t, x: torch.full_like(t, 0.7)), _score)
    got = sdekit.reverse(_Custom(g=lambda t, x: const), _score)
    a = ref.solve(x, method=method, steps=10, seed=4).x
    b = got.solve(x, method=method, steps=10, seed=4).x
    assert b.dtype == x.dtype
    torch.testing.assert_close(b, a, rtol=1e-6 if isinstance(const, torch.Tensor) and
                               const.dtype == torch.float32 else 0, atol=1e-6)


@pytest.mark.parametrize("kind", ["reverse", "flow"])
def test_drift_of_the_wrong_shape_is_refused(kind):
    sde = _Custom(f=lambda t, x: -x[:, :1])          # (batch, 1): would broadcast silently
    make = sdekit.reverse if kind == "reverse" else sdekit.probability_flow
    x = torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(sdekit.ShapeError, match=r"_Custom.f returned shape \(4, 1\) for x of shape \(4, 3\)"):
        make(sde, _score).solve(x, method="euler", steps=3, seed=0)


def test_forward_drift_of_the_wrong_shape_is_refused():
    sde = _Custom(f=lambda t, x: -x[:, :1])
    with pytest.raises(sdekit.SDEKitError, match=r"f returned shape \(4, 1\)"):
        sdekit.forward(sde).solve(torch.randn(4, 3, dtype=torch.float64), method="euler", steps=3, seed=0)


def test_diffusion_per_coordinate_that_matches_the_batch_is_refused():
    d = 3
    sde = _Custom(g=lambda t, x: torch.tensor([0.5, 1.0, 2.0], dtype=x.dtype))   # shape (d,), batch == d
    x = torch.randn(d, d, dtype=torch.float64)
    with pytest.raises(sdekit.ShapeError, match=r"_Custom.g returned shape \(3,\) for a batch of 3 but \(3,\) "
                                                r"for a batch of 1"):
        sdekit.reverse(sde, _score).solve(x, method="euler", steps=3, seed=0)


@pytest.mark.parametrize("g", [lambda t, x: torch.ones(x.shape[0], 1, dtype=x.dtype),
                               lambda t, x: torch.ones(7, dtype=x.dtype), lambda t, x: None,
                               lambda t, x: [1.0] * x.shape[0]])
def test_diffusion_of_the_wrong_shape_or_type_is_refused(g):
    x = torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(sdekit.ShapeError, match=r"_Custom.g returned .*g must return a tensor of shape \(batch,\)"):
        sdekit.reverse(_Custom(g=g), _score).solve(x, method="euler", steps=3, seed=0)


def test_coefficients_in_the_wrong_dtype_are_refused():
    sde = _Custom(f=lambda t, x: -x.float())
    with pytest.raises(sdekit.ShapeError, match="_Custom.f returned torch.float32 .* for x of torch.float64"):
        sdekit.reverse(sde, _score).solve(torch.randn(4, 3, dtype=torch.float64), method="euler", steps=3, seed=0)


def test_coefficients_are_checked_once_per_solve():
    calls = []

    def g(t, x):
        calls.append(t.shape[0])
        return torch.ones_like(t)
    x = torch.randn(4, 3, dtype=torch.float64)
    sdekit.reverse(_Custom(g=g), _score).solve(x, method="euler", steps=5, seed=0)
    # one probe with a batch of 1 in the whole solve; every other call at the full batch
    assert calls.count(1) == 1 and calls.count(4) >= 5


def test_g_without_arguments_is_refused():
    class NoArgs(_OU):
        def g(self):
            return 1.0
    with pytest.raises(sdekit.ArgumentTypeError, match=r"NoArgs.g must take \(t, x\) or \(t\)"):
        sdekit.reverse(NoArgs(), _score)


# ---------------------------------------------------------------------------------------------
# Every process pickles
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [lambda s: sdekit.reverse(s, _score), lambda s: sdekit.probability_flow(s, _score),
                                  lambda s: sdekit.forward(s), lambda s: sdekit.reverse(s, _score).as_stratonovich()],
                         ids=["reverse", "flow", "forward", "stratonovich"])
@pytest.mark.parametrize("sde", [sdekit.VPSDE(), _OU()], ids=["vp", "user"])
def test_every_process_pickles(make, sde):
    proc = make(sde)
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    kw = dict(method="euler", steps=5, seed=1)
    before = proc.solve(x, **kw).x
    clone = pickle.loads(pickle.dumps(proc))
    assert type(clone) is type(proc) and clone.sde_type == proc.sde_type
    torch.testing.assert_close(clone.solve(x, **kw).x, before, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# check_sde checks the public methods a training loop calls
# ---------------------------------------------------------------------------------------------

_CHECK = dict(n=1500, steps=200, seed=3, raise_on_failure=False)


class _WideMarginalVP(sdekit.VPSDE):
    def marginal_prob(self, x0, t):
        mean, std = super().marginal_prob(x0, t)
        return mean, 1.3 * std


class _WidePriorVP(sdekit.VPSDE):
    def prior_sampling(self, shape, generator=None, dtype=None, device=None):
        return 1.3 * super().prior_sampling(shape, generator=generator, dtype=dtype, device=device)

    def prior_logp(self, z):
        return super().prior_logp(z / 1.3) - z[0].numel() * torch.log(torch.tensor(1.3, dtype=z.dtype))


class _WrongLogpVP(sdekit.VPSDE):
    def prior_logp(self, z):   # the density of N(0, 1.3^2 I), not of the prior it samples
        return super().prior_logp(z / 1.3) - z[0].numel() * torch.log(torch.tensor(1.3, dtype=z.dtype))


class _UnnormalisedLogpVP(sdekit.VPSDE):
    def prior_logp(self, z):
        return super().prior_logp(z) + 0.2


def _status(report):
    return {r.name: r.status for r in report.rows}


def test_check_sde_reads_an_overridden_marginal_prob():
    from sdekit.validation import check_sde
    report = check_sde(_WideMarginalVP(), **_CHECK)
    assert _status(report)["marginal_prob solves the moment ODEs"] == "FAIL"
    assert "3.00e-01" in report.rows[0].measured


@pytest.mark.parametrize("cls", [_WidePriorVP, _WrongLogpVP, _UnnormalisedLogpVP])
def test_check_sde_reads_an_overridden_prior(cls):
    from sdekit.validation import check_sde
    assert _status(check_sde(cls(), **_CHECK))["prior matches the marginal at T"] == "FAIL"
    assert _status(check_sde(sdekit.VPSDE(), **_CHECK))["prior matches the marginal at T"] == "pass"


class _QuickStartOU(sdekit.SDE):
    """The quick start's Ornstein-Uhlenbeck SDE, as written there."""

    def f(self, t, x):
        return -x

    def g(self, t, x):
        return torch.full_like(t, 2 ** 0.5)


@pytest.mark.parametrize("sde", [_QuickStartOU(T=2.0), _OU(T=2.0)], ids=["g(t, x)", "g(t)"])
def test_check_sde_checks_the_quick_start_ou_numerically(sde):
    from sdekit.validation import check_sde
    assert _status(check_sde(sde, **_CHECK)) == {
        "simulation matches the moment ODEs": "pass", "prior matches the marginal at T": "skip",
        "reverse SDE returns the data": "pass", "probability flow returns the data": "pass"}



# ---------------------------------------------------------------------------------------------
# Threads: the tests choose one; the library never changes torch's global settings
# ---------------------------------------------------------------------------------------------

def test_the_suite_runs_on_one_thread_by_default():
    import os
    assert torch.get_num_threads() == int(os.environ.get("SDEKIT_TEST_THREADS", "1"))


@pytest.mark.parametrize("method,kw", [("euler", dict(steps=5, seed=0)), ("dopri5", dict(rtol=1e-3, atol=1e-3)),
                                       ("RK45", dict(rtol=1e-3, atol=1e-3))])
def test_solving_leaves_torchs_global_state_alone(method, kw):
    before = (torch.get_num_threads(), torch.get_default_dtype(), torch.is_grad_enabled())
    torch.set_num_threads(2)
    try:
        sde = sdekit.VPSDE()
        x = torch.randn(4, 2, dtype=torch.float64)
        make = sdekit.reverse if method == "euler" else sdekit.probability_flow
        with warnings.catch_warnings():     # a small state on several threads: the one-time hint may fire here
            warnings.simplefilter("ignore", UserWarning)
            make(sde, _score).solve(x, method=method, **kw)
        assert (torch.get_num_threads(), torch.get_default_dtype(), torch.is_grad_enabled()) == (2,) + before[1:]
    finally:
        torch.set_num_threads(before[0])


# ---------------------------------------------------------------------------------------------
# The convergence-study helpers are exported and documented
# ---------------------------------------------------------------------------------------------

def test_order_helpers_are_exported_and_the_documented_study_runs(capsys):
    import pathlib
    import re

    import sdekit.validation as v
    for name in ("strong_order", "ode_order", "fit_order", "OrderResult"):
        assert name in v.__all__ and callable(getattr(v, name))
    page = (pathlib.Path(__file__).parents[1] / "docs" / "orders.md").read_text()
    section = page.split("## Your own convergence study", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "docs/orders.md", "exec"), {})
    printed = [float(v) for v in capsys.readouterr().out.split()]
    assert printed == pytest.approx([0.5, 4.0, 2.0], abs=0.3)
    assert v.fit_order([1.0, 0.5, 0.25], [4.0, 1.0, 0.25]) == pytest.approx(2.0)
