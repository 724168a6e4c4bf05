"""check_sde on the library's SDEs, on users' SDEs, and on broken ones; the demo runs end to end."""

import io
import math

import pytest
import torch

import sdekit
from sdekit.validation import SDECheckError, check_sde
from sdekit.validation.demo import run as run_demo

SMALL = dict(n=1500, steps=200, seed=3)


@pytest.mark.parametrize("sde", [sdekit.VPSDE(), sdekit.SubVPSDE(), sdekit.VESDE()], ids=repr)
def test_library_sdes_pass(sde):
    report = check_sde(sde, **SMALL)
    assert report.ok
    assert [r.status for r in report.rows] == ["pass"] * 4


class ConstantRateSDE(sdekit.LinearSDE):
    """dx = -0.7 x dt + sqrt(1 + t) dw: linear, no closed form given (moments come from their ODEs)."""

    def drift_coef(self, t):
        return torch.full_like(t, -0.7)

    def diffusion_coef(self, t):
        return torch.sqrt(1 + t)


def test_linear_sde_without_closed_form_is_checked_through_its_moment_odes():
    sde = ConstantRateSDE(T=3.0, eps=1e-3)
    sde.prior_std = math.sqrt(1.0)  # deliberately not its p_T std
    report = check_sde(sde, raise_on_failure=False, **SMALL)
    by_name = {r.name: r for r in report.rows}
    assert by_name["simulation matches the moment ODEs"].status == "pass"   # no marginal_prob: simulated
    assert by_name["reverse SDE returns the data"].status == "pass"
    assert by_name["probability flow returns the data"].status == "pass"
    # p_T std for unit data: sqrt(alpha^2 + sigma^2) with sigma^2 -> about (1 + t)/1.4 at t = 3: ~1.7, not 1
    assert by_name["prior matches the marginal at T"].status == "FAIL"
    assert not report.ok


class OrnsteinUhlenbeck(sdekit.SDE):
    """dx = -theta x dt + s dw as a plain SDE with its closed-form marginal and stationary prior."""

    theta, s = 2.0, 0.8

    def f(self, t, x):
        return -self.theta * x

    def g(self, t, x):
        return torch.full_like(t, self.s)

    def marginal_prob(self, x0, t):
        decay = torch.exp(-self.theta * t)
        std = self.s * torch.sqrt(-torch.expm1(-2 * self.theta * t) / (2 * self.theta))
        return decay[:, None] * x0, std

    def prior_sampling(self, shape, generator=None, dtype=None, device=None):
        return torch.randn(shape, generator=generator, dtype=dtype, device=device) * self.s / math.sqrt(2 * self.theta)

    def prior_logp(self, z):
        var = self.s ** 2 / (2 * self.theta)
        return (-0.5 * z ** 2 / var - 0.5 * math.log(2 * math.pi * var)).sum(1)


def test_plain_sde_that_is_linear_is_checked_exactly():
    """A plain sdekit.SDE with f = -theta x and g = s is linear numerically: all four checks run."""
    report = check_sde(OrnsteinUhlenbeck(T=3.0), **SMALL)
    assert [r.name for r in report.rows][0] == "marginal_prob solves the moment ODEs"
    assert [r.status for r in report.rows] == ["pass"] * 4


class WrongMarginal(OrnsteinUhlenbeck):
    def marginal_prob(self, x0, t):
        mean, std = super().marginal_prob(x0, t)
        return mean, 1.5 * std


def test_wrong_marginal_is_caught_with_a_readable_report():
    with pytest.raises(SDECheckError) as info:
        check_sde(WrongMarginal(T=3.0), **SMALL)
    assert "marginal_prob solves the moment ODEs" in str(info.value)
    assert info.value.report.failures[0].status == "FAIL"


class GeometricBM(sdekit.SDE):
    """dx = mu x dt + s x dw: g depends on x, so no exact score; its marginal_prob is checked by simulation."""

    mu, s = -0.5, 0.2

    def f(self, t, x):
        return self.mu * x

    def g(self, t, x):
        return self.s * x

    def marginal_prob(self, x0, t):
        growth = torch.exp(self.mu * t)[:, None]
        return growth * x0, growth * x0.abs() * torch.sqrt(torch.expm1(self.s ** 2 * t))[:, None]


class WrongGeometricBM(GeometricBM):
    def marginal_prob(self, x0, t):
        mean, std = super().marginal_prob(x0, t)
        return mean, 1.5 * std


def test_nonlinear_sde_marginal_checked_by_simulation():
    report = check_sde(GeometricBM(), **SMALL)
    assert [(r.name, r.status) for r in report.rows] == [
        ("marginal_prob matches simulation", "pass"), ("prior matches the marginal at T", "skip"),
        ("reverse SDE returns the data", "skip"), ("probability flow returns the data", "skip")]
    bad = check_sde(WrongGeometricBM(), raise_on_failure=False, **SMALL)
    assert bad.rows[0].status == "FAIL"


class WrongSigmaVP(sdekit.VPSDE):
    def sigma(self, t):
        return 1.1 * super().sigma(t)


def test_closed_form_inconsistent_with_drift_and_diffusion_fails():
    report = check_sde(WrongSigmaVP(), raise_on_failure=False, **SMALL)
    assert report.rows[0].status == "FAIL"
    assert not report.ok


def test_demo_runs_every_backend_and_reports_errors_against_the_floor():
    out = io.StringIO()
    before = torch.get_num_threads()
    rows = run_demo("vp", n=400, seed=0, out=out, threads=1)
    assert torch.get_num_threads() == before, "the demo restores torch's thread count"
    assert {r["backend"] for r in rows} == {"torchsde", "torchdiffeq", "scipy"}
    text = out.getvalue()
    for row in rows:
        assert row["nfe"] > 0 and math.isfinite(row["sw2"])
        # exact score, every method converged: SW2 within the spread between exact sets, masses within 3 SEs
        assert row["sw2"] <= row["sw2_limit"], row
        assert row["sw2_ratio"] <= row["sw2_ratio_limit"] < 3.0, row   # the ratio the table prints, bounded
        assert row["mode_z"] <= 3.0, row
        assert row["verdict"] == "ok"
    assert "verdict: ok if SW2 <=" in text and "7 of 7 rows ok" in text
    assert "threads: 1 (small problem; --threads N to change)" in text


def test_demo_verdict_flags_a_sampler_that_is_off():
    out = io.StringIO()
    rows = run_demo("vp", n=400, seed=0, out=out, runs=[("reverse", "euler", dict(steps=2)),
                                                        ("flow", "rk4", dict(steps=40))])
    assert [r["verdict"] for r in rows] == ["CHECK", "ok"]
    assert rows[0]["sw2"] > rows[0]["sw2_limit"]
    assert "1 of 2 rows ok" in out.getvalue() and "CHECK: reverse euler (steps=2)" in out.getvalue()


def test_demo_chooses_one_thread_for_small_problems_and_says_so(monkeypatch):
    from sdekit.validation import demo
    seen = {}
    monkeypatch.setattr(demo, "run", lambda *a, **kw: seen.update(kw))
    demo.main(["--n", "100", "--device", "cpu"])
    assert seen["threads"] == 1
    demo.main(["--n", "100", "--device", "cpu", "--threads", "3"])
    assert seen["threads"] == 3
    assert demo.default_threads(10 ** 7) == torch.get_num_threads()
