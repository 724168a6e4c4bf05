r"""The one driver under every native method: :func:`run` integrates a solve with a stepper, fixed or adaptive.

Every sample has a :class:`State` (its state, time, counts and status; tensors whose first dimension is the batch),
moved by one of two controllers:

- **a fixed grid** (:func:`walk`), the constant-step controller: every sample's next time is the grid's next point
  and every step is accepted, so the state moves without masks or host synchronisation (every decision is known
  before the solve starts; the grid already contains the ``save_at`` times);
- **the adaptive controller** (:class:`_Adaptive`): each iteration attempts a step for every sample still running,
  accepts it where the error ratio is at most 1 and merges the accepted proposals row by row
  (:meth:`State.merge`); the step size comes from the stepper's :class:`~sdekit._stepping._control.Controller`.
  Samples never wait for each other, a step is clipped to land on the next ``save_at`` time, and the iteration
  makes no host synchronisation: at most every ``sync_every`` iterations (:data:`SYNC_EVERY` by default) one read
  of ``batch + 1`` numbers drops the finished samples from the batch (the evaluator is told the rows' indices, the
  keyed path and the stepper's carry are indexed with them) and plans the next read.  A sample with a non-finite
  evaluation stops with its last accepted state; a state that overflowed is retried smaller.
  ``per_sample=False`` gives the batch one step (the RMS of the samples' error ratios).  docs/adaptive.md has
  the details and their measurements.

``max_steps``, ``save_at``, the options ``denoise`` (the samples that reached ``t_end`` replaced by the data
prediction :math:`\hat x_0`, one more evaluation), ``hook`` (fixed grids: ``x = fn(x, t, noise)`` after every step
and on the initial state, with the solve's keyed path) and ``sync_every``, the result codes and the per-sample
status are written here once.  NFE and the non-finite record live in the process's evaluator; ``solve()`` turns
the :class:`~sdekit._solution.Outcome` into a :class:`sdekit.Solution`.
"""

import math
from dataclasses import dataclass, fields
from typing import Optional

import torch

from .._errors import InvalidParameterError, MethodArgumentError
from .._evaluator import finite_rows
from .._grid import save_indices
from .._solution import STATUS, Outcome, Result
from ._control import shared_ratio
from ._model import Model
from ._paths import solve_brownian
from ._stepper import check_bool, check_number

SYNC_EVERY = 2
RUNNING = -1
SUCCESS, MAX_STEPS, NON_FINITE, DT_TOO_SMALL = (STATUS.index(r) for r in (
    Result.SUCCESS, Result.MAX_STEPS, Result.NON_FINITE, Result.DT_TOO_SMALL))
_LAST = 1.01          # a step within 1% of the distance left goes all the way (no sliver steps)
_ATTEMPTS = 4         # the most attempts a sample makes: this many times max_steps


def run(stepper_class, method, pb):
    """Integrate ``pb`` (a :class:`~sdekit._methods.Problem`) with a native stepper: the entry of every sdekit
    method, fixed (``steps=``, ``dt=``, ``grid=``) or adaptive (``rtol=``/``atol=``) as the stepper declares."""
    adaptive = stepper_class.adaptive
    if adaptive and not pb.adaptive:
        raise MethodArgumentError(f"{method.name} adapts its step: give rtol=/atol= (dt= sets the first step)")
    if pb.adaptive and not adaptive:
        raise MethodArgumentError(f"{method.name} takes fixed steps: give steps=, dt= or grid=")
    proc = pb.process
    if stepper_class.kind == "sde" and proc.kind == "ode" and not stepper_class.deterministic_on_ode:
        raise MethodArgumentError(f"{method.name} samples the reverse SDE; integrate sdekit.reverse(sde, score_fn) "
                                  f"with it, or use an ODE sampler (ddim, dpmpp_2m, ...) on the probability flow")
    options = dict(pb.options)
    denoise = check_bool("denoise", options.pop("denoise", False))
    hook = options.pop("hook", None)
    sync_every = check_number("sync_every", options.pop("sync_every", SYNC_EVERY), 1, integer=True) if adaptive else 0
    if adaptive and hook is not None:
        raise MethodArgumentError(f"{method.name} gives every sample its own times, so a per-step hook does not "
                                  f"apply; use a fixed-step method for imputation hooks")
    if hook is not None and not callable(hook):
        raise InvalidParameterError(f"option hook must be callable as hook(x, t, noise) -> x, "
                                    f"got {type(hook).__name__}")
    model = Model(proc, method.name) if stepper_class.needs != "drift" or denoise else None
    stochastic = stepper_class.kind == "sde" and proc.kind == "sde"
    brownian = solve_brownian(pb, pb.x0) if stochastic or hook is not None else None
    stepper = stepper_class(model, brownian if stochastic else None, options, budget=pb.budget)
    if not adaptive:
        stepper.plan(pb.grid)
        return walk(stepper, pb, model=model, hook=hook, brownian=brownian, denoise=denoise)
    stepper.bind(proc, pb.rtol, pb.atol)
    outcome = _Adaptive(stepper, pb, pb.per_sample is False, sync_every).run()
    if denoise:
        _denoise(outcome, model, pb)
    return outcome


@dataclass
class State:
    r"""The per-sample state of a solve: each field a tensor whose first dimension is the batch (or, in an adaptive
    solve, the rows still running).

    ``x`` the states; ``t`` their times (float64); ``nfe``, ``steps``, ``rejected`` the counts (int64); ``status``
    :data:`RUNNING` or an index into :data:`~sdekit._solution.STATUS` (int8).  The adaptive controller's own:
    ``u`` the clock at ``t`` (``t`` or :math:`\lambda`), ``h`` the next step size in it, ``j`` the index of the next
    target (a save time or ``t_end``), ``prev`` the error ratio of the last accepted step.
    """

    x: torch.Tensor
    t: torch.Tensor
    nfe: torch.Tensor
    steps: torch.Tensor
    rejected: torch.Tensor
    status: torch.Tensor
    u: Optional[torch.Tensor] = None
    h: Optional[torch.Tensor] = None
    j: Optional[torch.Tensor] = None
    prev: Optional[torch.Tensor] = None

    def merge(self, accepted: torch.Tensor, **proposal):
        """Take each proposed field where ``accepted`` (a ``(batch,)`` mask) and keep the rest: the one place an
        attempt is written into the state."""
        for name, new in proposal.items():
            setattr(self, name, where_rows(accepted, new, getattr(self, name)))

    def rows(self, keep: torch.Tensor) -> "State":
        """The state of the rows ``keep`` alone."""
        return State(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[keep]
                        for f in fields(self)})


def where_rows(mask: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """``new`` in the rows where ``mask`` (shape ``(batch,)``) holds, ``old`` elsewhere, for tensors of any shape."""
    return torch.where(mask.view((-1,) + (1,) * (old.dim() - 1)), new, old)


# -- the fixed grid: the constant-step controller --------------------------------------------------
def walk(stepper, pb, model=None, hook=None, brownian=None, denoise=False):
    """Walk ``pb``'s fixed grid with a built ``stepper``: every sample steps to the grid's next point and every step
    is accepted.  The step counting, ``max_steps``, ``save_at``, the hook and the final denoising step, for sdekit's
    steppers and for torchsde's step functions alike.

    ``model`` (a :class:`Model`, needed for ``denoise``) computes the grid's coefficients once; ``hook`` and
    ``brownian`` are the caller's per-step hook and the keyed Brownian path it sees.
    """
    proc = pb.process
    x = pb.x0
    batch = x.shape[0]
    times = pb.grid.to(device=x.device)
    n = times.numel() - 1
    ts = model.remember(times, x) if model is not None else [times[i].expand(batch) for i in range(n + 1)]
    save = save_indices(pb.grid, pb.save_at)
    if hook is not None:
        x = _hooked(hook, x, ts[0], brownian)
    path = [x] if 0 in save else []
    limit = n if pb.max_steps is None else min(n, pb.max_steps)
    for i in range(limit):
        proc.evaluator.step = i + 1
        x = stepper.step(x, ts[i], ts[i + 1], i, n)
        if hook is not None:
            x = _hooked(hook, x, ts[i + 1], brownian)
        if i + 1 in save:
            path.append(x)
    if limit < n:
        t_reached = float(pb.grid[limit])
        return Outcome(x, t_reached, path, steps=limit, rejected=0, result=Result.MAX_STEPS,
                       detail=f"stopped at t={t_reached:.6g} after max_steps={pb.max_steps} of {n} grid steps")
    if denoise:
        proc.evaluator.step = n + 1
        x = model.data(x, ts[n])
    return Outcome(x, pb.t_end, path, steps=n, rejected=0)


def _hooked(hook, x, t, brownian):
    out = hook(x, t, brownian)
    if not (isinstance(out, torch.Tensor) and out.shape == x.shape and out.dtype == x.dtype):
        raise InvalidParameterError(f"the hook returned {type(out).__name__} "
                                    f"{tuple(out.shape) if isinstance(out, torch.Tensor) else ''}; it must return "
                                    f"the state, a tensor of shape {tuple(x.shape)} and dtype {x.dtype}")
    return out


def _denoise(outcome, model, pb):
    r"""Replace the samples that reached ``t_end`` by the data prediction :math:`\hat x_0` there (one evaluation)."""
    ev = pb.process.evaluator
    done = outcome.per_sample["status"] == SUCCESS
    before = ev.nfe
    ev.step = None
    t = torch.full_like(outcome.per_sample["t"], pb.t_end)
    outcome.x = where_rows(done, model.data(outcome.x, t), outcome.x)
    outcome.per_sample["nfe"] = outcome.per_sample["nfe"] + (ev.nfe - before) * done
    outcome.stats["row_evaluations"] += (ev.nfe - before) * done.numel()


# -- the adaptive controller -------------------------------------------------------------------
class _Adaptive:
    """One adaptive solve: the per-sample state, the iteration and the bookkeeping of finished samples."""

    def __init__(self, stepper, pb, shared, sync_every):
        self.stepper, self.controller, self.pb = stepper, stepper.controller(), pb
        self.shared, self.k = shared, sync_every
        self.evaluator = pb.process.evaluator
        x = pb.x0
        n, dev = x.shape[0], x.device
        self.n, self.f64 = n, dict(dtype=torch.float64, device=dev)
        clock = stepper.to_clock
        u0 = float(clock(torch.tensor([pb.t_start], dtype=torch.float64))[0])
        u1 = float(clock(torch.tensor([pb.t_end], dtype=torch.float64))[0])
        if not (math.isfinite(u0) and math.isfinite(u1)) or u0 == u1:
            raise InvalidParameterError(f"{stepper.name} steps in {stepper.clock}, which is {u0} at t_start and "
                                        f"{u1} at t_end; move t_end away from 0 (eps)")
        self.dir = 1.0 if u1 > u0 else -1.0
        saves = [] if pb.save_at is None else [float(s) for s in pb.save_at]
        self.n_saves = len(saves)
        targets = saves + ([pb.t_end] if not saves or saves[-1] != pb.t_end else [])
        self.targets_t = torch.tensor(targets, **self.f64)
        self.targets_u = clock(self.targets_t)
        self.last_target = len(targets) - 1
        span = max(abs(pb.t_start), abs(pb.t_end), 1.0)
        self.floor = max(pb.dt_min or 0.0, 64 * torch.finfo(torch.float64).eps * span)
        if stepper.brownian is not None:   # no step inside a leaf of the keyed path, where values share a normal
            self.floor = max(self.floor, stepper.brownian.leaf)
        # the last slot takes the writes of samples that hit no save time; a sample that stops before a save
        # time (max_steps) has NaN there
        self.path = (torch.full((self.n_saves + 1,) + tuple(x.shape), math.nan, dtype=x.dtype, device=dev)
                     if self.n_saves else None)
        count = dict(dtype=torch.int64, device=dev)
        # the full batch, written back at every host read
        self.out = State(x=x.clone(), t=torch.full((n,), pb.t_start, **self.f64), nfe=torch.zeros(n, **count),
                         steps=torch.zeros(n, **count), rejected=torch.zeros(n, **count),
                         status=torch.full((n,), RUNNING, dtype=torch.int8, device=dev))
        self.rows = torch.arange(n, **count)
        self.row_evaluations = 0
        self.syncs = 0

    def run(self):
        st, ev, pb = self.stepper, self.evaluator, self.pb
        ev.rows, ev.batch = self.rows, self.n
        a = self.out.rows(self.rows)          # the active rows (all of them at first)
        a.u = st.to_clock(a.t)
        a.j = torch.zeros(self.n, dtype=torch.int64, device=a.t.device)
        before = ev.nfe
        carry = st.start(a.x, a.t)
        if pb.dt0 is not None:
            h = (st.to_clock(a.t + math.copysign(pb.dt0, pb.t_end - pb.t_start)) - a.u).abs()
        else:
            h = st.initial_step(a.x, a.t, pb.t_end, carry)
        h = h.detach().to(torch.float64)
        # a sample whose first evaluations (the carry, the initial step's) went non-finite stops here
        bad = self._failed(~torch.isfinite(h))
        a.status = torch.where(bad, NON_FINITE, a.status).to(torch.int8)
        h = torch.where(bad, 1.0, h)
        a.h = torch.where(bad, math.inf, h).min().expand_as(h).clone() if self.shared else h
        a.prev = torch.ones(self.n, **self.f64)
        self._count(a, before, torch.ones_like(bad))
        iteration = 0
        a, carry, next_read = self._read(a, carry)
        while next_read:
            iteration += 1
            ev.step = iteration
            carry = self._iterate(a, carry, iteration)
            next_read -= 1
            if next_read == 0:
                a, carry, next_read = self._read(a, carry)
        ev.rows = ev.batch = None
        return self._outcome(iteration)

    def _iterate(self, a, carry, iteration):
        x, t, u, h, j = a.x, a.t, a.u, a.h, a.j
        running = a.status == RUNNING
        tgt_u = self.targets_u[j]
        left = (tgt_u - u) * self.dir
        last = h * _LAST >= left
        h_try = torch.where(last, left, h)
        u_next = torch.where(running, torch.where(last, tgt_u, u + self.dir * h), u)
        # finished samples: zero-length steps, discarded
        t_next = torch.where(running, torch.where(last, self.targets_t[j], self.stepper.from_clock(u_next)), t)
        before = self.evaluator.nfe
        x_new, err, carry_new = self.stepper.attempt(x, t, t_next, carry, iteration)
        self._count(a, before, running)
        # a sample with a non-finite evaluation in this attempt (a stage, one only in the error estimate, its
        # state) stops here, with its last accepted state, counts and time; the others go on
        bad = running & self._failed(None)
        ok = running & ~bad
        err = err.detach().to(torch.float64)     # step sizes are not differentiated (as diffrax's controllers)
        if self.shared:
            err = shared_ratio(err, ok)
        # a state that overflowed is not accepted (its error ratio can read 0 against an infinite scale)
        accepted = ok & (err <= 1) & finite_rows(x_new)
        rejected = ok & ~accepted
        proposed = self.controller.propose(h_try, err, a.prev, accepted)
        # a step cut short to land on a target (a save_at time) does not shrink the next one
        proposed = torch.where(accepted & last, torch.maximum(proposed, h), proposed)
        hit = accepted & last
        a.merge(accepted, x=x_new, t=t_next, u=u_next, steps=a.steps + 1)
        a.merge(accepted & ~(last & (h_try < h)), prev=err)   # a cut step's error is not kept
        a.merge(ok, h=proposed, rejected=a.rejected + 1 - accepted.long())
        a.merge(hit, j=(j + 1).clamp_max(self.last_target))
        carry = {k: where_rows(accepted, carry_new[k], v) for k, v in carry.items()}
        if self.path is not None:
            slot = torch.where(hit & (j < self.n_saves), j, self.n_saves)
            self.path.index_put_((slot, self.rows), a.x)
        status = torch.where(bad, NON_FINITE, a.status)
        status = torch.where(hit & (j == self.last_target), SUCCESS, status)
        tiny = rejected & ((t_next - t).abs() <= self.floor)
        status = torch.where(tiny & (status == RUNNING), DT_TOO_SMALL, status)
        out_of_steps = (a.steps >= self.pb.max_steps) | (a.steps + a.rejected >= _ATTEMPTS * self.pb.max_steps)
        a.status = torch.where(out_of_steps & (status == RUNNING), MAX_STEPS, status).to(torch.int8)
        return carry

    def _failed(self, also):
        """The active samples that went non-finite: those the evaluator recorded (any of their evaluations so
        far: an output, a state handed to the model, a time) and ``also`` (a mask or ``None``); no host sync."""
        got = self.evaluator.failed_rows(self.rows)
        if got is None:
            got = torch.zeros(self.rows.shape, dtype=torch.bool, device=self.rows.device)
        return got if also is None else got | also

    def _count(self, a, before, running):
        cost = self.evaluator.nfe - before        # host integers: no sync
        self.row_evaluations += cost * int(self.rows.numel())
        a.nfe = a.nfe + cost * running

    def _read(self, a, carry):
        """The planned host read: write the active rows back, drop the finished ones, plan the next read.

        Returns the active rows, their carry and the iterations until the next read (0: every sample is done):
        ``sync_every``, or fewer when the running samples' distance left over their step size says that they
        finish sooner (so that a batch does not idle on zero-length steps after its last sample is done).
        """
        self.syncs += 1
        for f in fields(self.out):
            if getattr(self.out, f.name) is not None:
                getattr(self.out, f.name).index_copy_(0, self.rows, getattr(a, f.name))
        running = a.status == RUNNING
        left = (self.targets_u[-1] - a.u) * self.dir
        estimate = torch.where(running, left / a.h.clamp_min(1e-300), 0.0).max()
        host = torch.cat([running.to(torch.float64), estimate.view(1)]).cpu()   # the one device-to-host copy
        keep = host[:-1].nonzero().flatten()
        if keep.numel() == 0:
            return a, carry, 0
        estimate = float(host[-1])
        plan = math.ceil(min(estimate, 1e9) / _LAST) if math.isfinite(estimate) else self.k   # NaN: read at k
        next_read = int(min(self.k, max(1, plan)))
        if keep.numel() < self.rows.numel():
            keep = keep.to(self.rows.device)
            a, carry = a.rows(keep), {k: v[keep] for k, v in carry.items()}
            self.rows = self.rows[keep]
            self.evaluator.rows = self.rows
            if self.stepper.brownian is not None:
                self.stepper.brownian = self.stepper.brownian.rows(keep)
        return a, carry, next_read

    def _outcome(self, iterations):
        out, pb = self.out, self.pb
        status = out.status.cpu()
        t = out.t.cpu()
        result, detail = Result.SUCCESS, ""
        for code, words in ((NON_FINITE, "a non-finite value (x keeps their last finite state)"),
                            (MAX_STEPS, f"max_steps={pb.max_steps} accepted steps"),
                            (DT_TOO_SMALL, f"a step below dt_min={self.floor:.3g}")):
            rows = (status == code).nonzero().flatten().tolist()
            if rows and result is Result.SUCCESS:
                result = STATUS[code]
            if rows:
                shown = ", ".join(str(r) for r in rows[:8]) + (", ..." if len(rows) > 8 else "")
                detail += ("; " if detail else "") + (f"samples [{shown}] ({len(rows)} of {self.n}) stopped at "
                                                       f"{words}, at t in [{float(t[rows].min()):.6g}, "
                                                       f"{float(t[rows].max()):.6g}]")
        # the time of x: t_end when every sample got there, else the time of the sample furthest from t_end
        # among the samples that did not go non-finite (theirs stopped early), unless none did
        usable = status != NON_FINITE
        t_usable = t[usable] if bool(usable.any()) else t
        t_reached = float(t_usable[(t_usable - pb.t_end).abs().argmax()])
        path = [] if self.path is None else list(self.path[:self.n_saves].unbind(0))
        per_sample = {"nfe": out.nfe, "steps": out.steps, "rejected": out.rejected, "t": out.t,
                      "status": out.status.clamp_min(0)}
        stats = {"nfe_mean": float(out.nfe.double().mean()), "nfe_max": int(out.nfe.max()),
                 "row_evaluations": self.row_evaluations, "syncs": self.syncs, "sync_every": self.k,
                 "iterations": iterations, "steps_total": int(out.steps.sum()),
                 "rejected_total": int(out.rejected.sum())}
        return Outcome(out.x, t_reached, path, steps=int(out.steps.max()), rejected=int(out.rejected.max()),
                       result=result, detail=detail, per_sample=per_sample, stats=stats)
