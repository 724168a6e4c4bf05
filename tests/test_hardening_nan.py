"""A sample whose score goes non-finite, on every adaptive method and in likelihoods.

The score is the exact one of a 2-D Gaussian, poisoned (NaN, or inf) for the rows *marked in the state*: rows whose
first coordinate is above 100 (the others are O(1)), so the same sample fails in any batch.  ``Poison(k=...)``
poisons them at the k-th call of the solve only (the first evaluation, the initial-step selection, a stage that
only enters the error estimate, a later one), ``k=None`` at every call.  Every test checks that

- that sample, and only it, is marked (status NON_FINITE, ``failed``, its NFE, steps and time as far as it got,
  its row of x the last finite state) and every other sample finishes;
- with sdekit's per-sample methods the others equal, to 1e-12, what they give in a batch without the marked rows
  (per-sample stepping makes each sample independent of its batch; the keyed noise is indexed by the sample);
- ``throw=False`` never raises, and ``throw=True`` raises one ``SolveError`` with a one-line message naming the
  samples, after finishing (its ``.solution`` holds the finished samples);
- a log-likelihood that was not integrated to T is NaN, and the finished ones match the exact model density.
"""

import math

import pytest
import torch

import sdekit
from sdekit import Result, SolveError
from sdekit._stepping._control import batch_ratio as error_ratio
from sdekit.validation import GaussianData

F64 = torch.float64
EPS = 1e-5                     # the likelihood's start time
MARK = 100.0                   # a row whose first coordinate is above this is poisoned
STATUS_NON_FINITE = 2          # sdekit._solution.STATUS
SDE = sdekit.VPSDE()
DATA = GaussianData(torch.tensor([0.5, -0.5], dtype=F64), torch.tensor([[0.3, 0.1], [0.1, 0.3]], dtype=F64), SDE)


def marked(x):
    return x.reshape(x.shape[0], -1)[:, 0] > MARK


class Poison:
    """``DATA.score``, with ``value`` on the marked rows at the k-th call (every call with ``k=None``)."""

    def __init__(self, k=None, value=math.nan, scale=None):
        self.k, self.value, self.scale = k, value, scale
        self.calls = 0
        self.hit = False      # whether a marked row was poisoned at all

    def __call__(self, x, t):
        self.calls += 1
        s = DATA.score(x, t)
        if self.scale is not None:
            s = self.scale * s
        if self.k is None or self.calls == self.k:
            bad = marked(x)
            self.hit = self.hit or bool(bad.any())
            s = torch.where(bad[:, None], torch.full_like(s, self.value), s)
        return s


class _NanGrad(torch.autograd.Function):
    """The identity, with a NaN gradient for the marked rows: the score is finite, its divergence is not."""

    @staticmethod
    def forward(ctx, s, bad):
        ctx.save_for_backward(bad)
        return s.clone()

    @staticmethod
    def backward(ctx, g):
        (bad,) = ctx.saved_tensors
        return torch.where(bad[:, None], torch.full_like(g, math.nan), g), None


def nan_divergence_score(x, t):
    return _NanGrad.apply(DATA.score(x, t), marked(x))


def start(n=6, rows=(2,), seed=0, t=None):
    """``n`` states (prior samples, or data at ``t``), the rows ``rows`` marked."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g, dtype=F64) if t is None else DATA.sample(n, t=t, generator=g)
    x[list(rows), 0] = 1e6
    return x


# -- solves ---------------------------------------------------------------------------------------------------------
EVALS = {"sdekit.dopri5": 6, "sdekit.bosh3": 3, "dpm_adaptive": 3, "improved_euler": 2}   # evaluations an attempt
T_END = 1e-3


def _solve(method, score, x, index=None, **kw):
    """``method`` on the flow (the reverse SDE for improved_euler, its keyed noise indexed by ``index``)."""
    if method == "improved_euler":
        index = torch.arange(x.shape[0]) if index is None else index
        noise = sdekit.KeyedBrownian(T_END, 1.0, tuple(x.shape), seed=7, index=index, dtype=x.dtype)
        return sdekit.reverse(SDE, score).solve(x, method=method, t_end=T_END, noise=noise, **kw)
    tol = {} if method == "dpm_adaptive" else dict(rtol=1e-5, atol=1e-5)
    return sdekit.probability_flow(SDE, score).solve(x, method=method, t_end=T_END, **tol, **kw)


def _check_marked(sol, bad, k, evals, x0):
    ps = sol.per_sample
    assert sol.result is Result.NON_FINITE
    assert torch.equal(sol.failed, bad)
    assert torch.equal(ps.status == STATUS_NON_FINITE, bad) and bool((ps.status[~bad] == 0).all())
    assert bool(torch.isfinite(sol.x).all())     # a failed sample keeps its last finite state, at ps.t
    # the marked samples' counts are as far as they got: through the attempt with the k-th call
    first = 1 if k is None else k
    assert bool((ps.nfe[bad] >= first).all()) and bool((ps.nfe[bad] < first + evals).all())
    none = ps.steps == 0                          # failed in its first step: still at t_start, where it began
    assert torch.equal(none[bad], ps.t[bad] == 1.0) and torch.equal(sol.x[bad & none], x0[bad & none])
    if k is None or k <= 2 + evals:
        assert bool(none[bad].all())
    else:
        assert not bool(none[bad].any())


CASES = [("sdekit.dopri5", k) for k in (1, 2, 8, 30, None)] + \
        [("sdekit.bosh3", k) for k in (1, 2, 5, 30, None)] + \
        [("dpm_adaptive", k) for k in (1, 3, 20, None)] + \
        [("improved_euler", k) for k in (1, 2, 30, None)]


@pytest.mark.parametrize("method,k", CASES)
def test_a_sample_that_goes_non_finite_is_marked_and_the_others_finish(method, k):
    """k = 1: the first evaluation (the crash of the issue: ``cannot convert float NaN to integer``); 2: the
    Runge-Kutta pairs' initial-step selection; 8 (dopri5) and 5 (bosh3): the first-same-as-last stage of the first
    attempt, which enters only its error estimate; later calls; every call."""
    x = start(rows=(2, 4))
    bad = marked(x)
    poison = Poison(k)
    sol = _solve(method, poison, x, throw=False)
    assert poison.hit
    _check_marked(sol, bad, k, EVALS[method], x)
    ref = _solve(method, DATA.score, x[~bad], index=torch.arange(x.shape[0])[~bad])
    assert ref.success
    assert (sol.x[~bad] - ref.x).abs().max() <= 1e-12
    for name in ("nfe", "steps", "rejected"):
        assert torch.equal(getattr(sol.per_sample, name)[~bad], getattr(ref.per_sample, name))
    assert sol.t == ref.t == T_END          # the time of the rows that are not NaN

    # throw=True (the default): one SolveError after finishing, one line, naming the samples
    with pytest.raises(SolveError) as caught:
        _solve(method, Poison(k), x)
    message = str(caught.value)
    assert "\n" not in message and "[2, 4]" in message
    assert caught.value.solution is not None
    assert (caught.value.solution.x[~bad] - ref.x).abs().max() <= 1e-12


@pytest.mark.parametrize("method", list(EVALS))
def test_inf_scores_and_every_sample_failing_never_raise_with_throw_false(method):
    x = start(rows=(0,))
    sol = _solve(method, Poison(1, value=math.inf), x, throw=False)
    _check_marked(sol, marked(x), 1, EVALS[method], x)
    every = start(n=3, rows=(0, 1, 2))
    sol = _solve(method, Poison(None), every, throw=False)
    assert sol.result is Result.NON_FINITE and bool(sol.failed.all())
    assert bool((sol.per_sample.status == STATUS_NON_FINITE).all()) and torch.equal(sol.x, every)
    with pytest.raises(SolveError, match=r"samples \[0, 1, 2\]"):
        _solve(method, Poison(None), every)


@pytest.mark.parametrize("sync_every", [1, 4])
def test_marking_does_not_depend_on_the_host_reads(sync_every):
    x = start(rows=(1,))
    bad = marked(x)
    sol = _solve("sdekit.dopri5", Poison(9), x, throw=False, options={"sync_every": sync_every})
    _check_marked(sol, bad, 9, 6, x)
    ref = _solve("sdekit.dopri5", DATA.score, x[~bad], options={"sync_every": sync_every})
    assert (sol.x[~bad] - ref.x).abs().max() <= 1e-12


def test_shared_step_leaves_the_failed_sample_out():
    """per_sample=False: the batch shares one step, whose error leaves the failed sample out."""
    x = start(rows=(3,))
    bad = marked(x)
    sol = _solve("sdekit.dopri5", Poison(1), x, throw=False, per_sample=False)
    _check_marked(sol, bad, 1, 6, x)
    ref = _solve("sdekit.dopri5", DATA.score, x[~bad], per_sample=False)
    assert (sol.x[~bad] - ref.x).abs().max() <= 1e-9


def test_save_at_keeps_what_the_failed_sample_reached():
    x = start(rows=(2,))
    bad = marked(x)
    sol = _solve("sdekit.dopri5", Poison(30), x, throw=False, save_at=[0.9, 0.5, 0.1])
    assert torch.equal(sol.failed, bad) and bool(torch.isfinite(sol.path[:, ~bad]).all())
    reached = sol.per_sample.t[bad]
    saved = sol.ts.to(F64)[:, None] >= reached[None]       # the reverse flow: saved before it stopped
    assert bool(torch.isfinite(sol.path[:, bad][saved]).all()) and bool(torch.isnan(sol.path[:, bad][~saved]).all())


class _Overflowing(sdekit.SDE):
    """dx = f dt + 0.1 dW with f = -x, and f = 1e308 (finite) on the marked rows: Improved Euler's
    x + (b0 + b1) dt / 2 overflows although every evaluation is finite, and its error estimate (b0 - b1) is 0."""

    def f(self, t, x):
        return torch.where(marked(x)[:, None], torch.full_like(x, 1e308), -x)

    def g(self, t, x):
        return torch.full_like(t, 0.1)


def test_a_state_that_overflows_is_never_accepted():
    x = start(n=4, rows=(1,))
    bad = marked(x)
    noise = sdekit.KeyedBrownian(0.0, 1.0, tuple(x.shape), seed=2, dtype=F64)
    fwd = sdekit.forward(_Overflowing())
    sol = fwd.solve(x, method="improved_euler", rtol=1e-3, atol=1e-3, noise=noise, throw=False)
    assert bool(torch.isfinite(sol.x).all())                      # no infinite state was accepted
    assert bool((sol.per_sample.status[bad] != 0).all()) and bool((sol.per_sample.status[~bad] == 0).all())
    alone = fwd.solve(x[~bad], method="improved_euler", rtol=1e-3, atol=1e-3,
                      noise=sdekit.KeyedBrownian(0.0, 1.0, (3, 2), seed=2, index=torch.arange(4)[~bad], dtype=F64))
    assert (sol.x[~bad] - alone.x).abs().max() <= 1e-12


def test_torchsde_adaptive_steps_go_on_without_the_failed_sample():
    """torchsde's methods with sdekit's controller share one step; its error leaves the failed sample out."""
    x = start(rows=(2,))
    bad = marked(x)
    rev = sdekit.reverse(SDE, Poison(None))
    sol = rev.solve(x, method="torchsde.euler", rtol=1e-2, atol=1e-2, t_end=T_END, seed=3, throw=False)
    assert sol.result is Result.NON_FINITE and torch.equal(sol.failed, bad)
    assert bool((sol.per_sample.status[~bad] == 0).all()) and bool(torch.isfinite(sol.x[~bad]).all())
    assert sol.t == T_END
    with pytest.raises(SolveError, match=r"samples \[2\]"):
        rev.solve(x, method="torchsde.euler", rtol=1e-2, atol=1e-2, t_end=T_END, seed=3)


def test_controller_error_ratio_leaves_non_finite_samples_out():
    g = torch.Generator().manual_seed(1)
    y1, y2 = torch.randn(5, 3, generator=g, dtype=F64), torch.randn(5, 3, generator=g, dtype=F64)
    scale = 1e-3 + 1e-3 * torch.maximum(y1.abs(), y2.abs())
    assert error_ratio(y1, y2, 1e-3, 1e-3) == ((y1 - y2) / scale).pow(2).mean().sqrt()   # unchanged when finite
    y1[1, 2] = math.nan
    y2[3, 0] = math.inf
    keep = [0, 2, 4]
    assert torch.isclose(error_ratio(y1, y2, 1e-3, 1e-3), error_ratio(y1[keep], y2[keep], 1e-3, 1e-3), rtol=1e-14)
    assert torch.isnan(error_ratio(y1[[1, 3]], y2[[1, 3]], 1e-3, 1e-3))


# -- likelihoods ----------------------------------------------------------------------------------------------------
def exact_model_logp(x):
    r"""The model density :math:`\log\pi(\Phi(x)) + \log|\det\partial\Phi/\partial x|` (Gaussian data: the flow
    map :math:`\Phi` is GaussianData's closed form)."""
    z = DATA.flow_map(x, EPS, SDE.T)
    _, den_eps = DATA._coefs(EPS, x.shape[0], x.dtype, x.device)
    _, den_T = DATA._coefs(SDE.T, x.shape[0], x.dtype, x.device)
    return SDE.prior_logp(z) + 0.5 * (den_T.log() - den_eps.log()).sum(-1)


TOL = 1e-3 * 2          # nats (1e-3 per dimension) at rtol = atol = 1e-5, exact divergence
LIK_METHODS = ["sdekit.dopri5", "sdekit.bosh3", "dopri5", "bosh3", "RK45"]


def _check_likelihood(res, bad):
    sol = res.solution
    assert sol.result is Result.NON_FINITE and torch.equal(sol.failed, bad)
    assert torch.equal(sol.per_sample.status == STATUS_NON_FINITE, bad)
    for v in (res.log_likelihood, res.prior_logp, res.delta_logp):
        assert bool(torch.isnan(v[bad]).all()) and bool(torch.isfinite(v[~bad]).all())
    assert bool(torch.isnan(res.z[bad]).all())


@pytest.mark.parametrize("method", LIK_METHODS)
@pytest.mark.parametrize("k", [1, 2, 9, None])
def test_likelihood_exact_divergence_marks_the_sample_and_keeps_the_others(method, k):
    x = start(rows=(2,), t=EPS)
    bad = marked(x)
    flow = sdekit.probability_flow(SDE, Poison(k))
    res = flow.log_likelihood(x, method, divergence="exact", throw=False)
    _check_likelihood(res, bad)
    ll = res.log_likelihood[~bad]
    assert (ll - exact_model_logp(x[~bad])).abs().max() < TOL
    assert (ll - DATA.log_prob(x[~bad], EPS)).abs().max() < 0.05     # the data density, up to the prior's mismatch
    if method.startswith("sdekit."):
        clean = sdekit.probability_flow(SDE, DATA.score).log_likelihood(x[~bad], method, divergence="exact")
        assert (ll - clean.log_likelihood).abs().max() <= 1e-12
    with pytest.raises(SolveError) as caught:
        sdekit.probability_flow(SDE, Poison(k)).log_likelihood(x, method, divergence="exact")
    assert "\n" not in str(caught.value) and "[2]" in str(caught.value)


@pytest.mark.parametrize("method", LIK_METHODS)
def test_likelihood_hutchinson_marks_the_sample_and_keeps_the_others(method):
    """The probes are drawn for the batch, so the reference is the same batch with the clean score."""
    x = start(rows=(1, 4), t=EPS)
    bad = marked(x)
    res = sdekit.probability_flow(SDE, Poison(3)).log_likelihood(x, method, divergence="rademacher", probes=2,
                                                                 seed=5, throw=False)
    _check_likelihood(res, bad)
    assert bool(torch.isnan(res.stderr[bad]).all()) and bool(torch.isfinite(res.stderr[~bad]).all())
    clean = sdekit.probability_flow(SDE, DATA.score).log_likelihood(x, method, divergence="rademacher", probes=2,
                                                                    seed=5)
    gap = (res.log_likelihood[~bad] - clean.log_likelihood[~bad]).abs().max()
    assert gap <= (1e-12 if method.startswith("sdekit.") else TOL)


@pytest.mark.parametrize("method", ["sdekit.dopri5", "dopri5", "RK45"])
def test_likelihood_nan_only_in_the_divergence(method):
    """The score is finite and its divergence is not: the flow records the sample and freezes it."""
    x = start(rows=(0, 3), t=EPS)
    bad = marked(x)
    flow = sdekit.probability_flow(SDE, nan_divergence_score)
    res = flow.log_likelihood(x, method, divergence="exact", throw=False)
    _check_likelihood(res, bad)
    assert (res.log_likelihood[~bad] - exact_model_logp(x[~bad])).abs().max() < TOL
    with pytest.raises(SolveError, match=r"\[0, 3\]"):
        flow.log_likelihood(x, method, divergence="exact")


@pytest.mark.parametrize("method", ["sdekit.dopri5", "dopri5"])
def test_likelihood_of_every_sample_failing_is_all_nan(method):
    x = start(n=3, rows=(0, 1, 2), t=EPS)
    res = sdekit.probability_flow(SDE, Poison(None)).log_likelihood(x, method, throw=False)
    _check_likelihood(res, torch.ones(3, dtype=torch.bool))


@pytest.mark.parametrize("method", ["sdekit.dopri5", "dopri5", "RK45"])
def test_likelihood_not_integrated_to_T_is_nan(method):
    """A solve stopped by max_steps: before, the samples that did not reach T got log pi(x_reached) + the partial
    integral, plausible numbers (-6.9 against an exact -2.1); now NaN, and the samples that did reach T keep theirs."""
    x = start(n=6, rows=(), t=EPS)
    x[5] *= 4                                      # one sample far out: more steps
    res = sdekit.probability_flow(SDE, DATA.score).log_likelihood(x, method, max_steps=6, throw=False)
    done = res.solution.per_sample.status == 0
    assert not bool(done.all())
    assert bool(torch.isnan(res.log_likelihood[~done]).all())
    assert (res.log_likelihood[done] - exact_model_logp(x[done])).abs().max() < TOL if bool(done.any()) else True


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones((), dtype=F64))
        self.poison = Poison(None)

    def forward(self, x, t):
        self.poison.scale = self.scale
        return self.poison(x, t)


def test_adjoint_likelihood_marks_the_sample_and_keeps_the_others():
    x = start(rows=(2,), t=EPS)
    bad = marked(x)
    net = _Net()
    flow = sdekit.probability_flow(SDE, net)
    res = flow.log_likelihood(x, "dopri5", divergence="exact", adjoint=True, throw=False)
    _check_likelihood(res, bad)
    assert (res.log_likelihood[~bad] - exact_model_logp(x[~bad])).abs().max() < TOL
    (-res.log_likelihood[~bad].sum()).backward()
    assert net.scale.grad is not None and bool(torch.isfinite(net.scale.grad))
    with pytest.raises(SolveError, match=r"\[2\]"):
        flow.log_likelihood(x, "dopri5", divergence="exact", adjoint=True)
