r"""The adaptive loop: a step size, a time and a status per sample, all on the device.

``run_adaptive(stepper_class, method, problem)`` integrates with an
:class:`~sdekit._stepping._stepper.AdaptiveStepper`.  Each sample has its own time :math:`t_i`, step size
:math:`h_i` (in the stepper's clock: :math:`t` or the log-SNR :math:`\lambda`), error ratio of its last
accepted step, counters (NFE, accepted, rejected) and status; one iteration attempts one step for every
sample still running, accepts it where its error ratio is at most 1, and lets the controller propose the next
step from the attempted one.  Samples never wait for each other: the hardest sample does not set the pace.

**Host synchronisation.** An iteration makes none: acceptance, control, the end of each sample (``t_end``
reached, ``max_steps``, a step below ``dt_min``) are ``torch.where`` on ``(batch,)`` tensors.  At most every
``k`` iterations (``k`` = :data:`SYNC_EVERY` = 2 by default; ``options={"sync_every": k}``) the loop reads
which samples still run (one device-to-host copy of ``batch + 1`` numbers), stops when none does, and
otherwise drops the finished samples from the batch: the model then sees only the samples still running.
The same read plans the next one: after ``min(k, n)`` iterations, with ``n`` the largest number of steps
of the current size any running sample needs to finish, so a short solve is not padded out to ``k``.  Between
two reads a finished sample takes zero-length steps whose result is discarded (at most ``k - 1`` of them,
counted in ``Solution.stats["row_evaluations"]``, never in its own NFE).  A larger ``k`` saves host reads; a
smaller one wastes fewer evaluations on finished samples.

**Non-finite values.** After every attempt the loop reads the evaluator's per-sample record on the device
(no sync): a sample with a NaN or inf at any of its evaluations so far (an output, a state or a time handed to
the model; the first evaluation and the initial step's included) stops with status ``NON_FINITE``, its last
accepted state, time and counts (the failing attempt's evaluations counted), and drops out at the next read; the
others go on unchanged.  A state that overflowed without a non-finite evaluation is not accepted (the step is
retried smaller).  ``Solution.t`` is then the time of the other samples.

**Samples dropping out.** Everything per sample (state, times, step sizes, the stepper's carry, the keyed
Brownian path) is indexed by the rows still running, and the evaluator is told their indices in the full
batch, so its record of non-finite values names the right samples.  Because the noise is keyed by the
sample's index and the error norm is per sample, sample ``i`` comes out the same whether it is solved alone or
in any batch (up to the floating-point rounding of the model on different batch sizes).

**Per-sample or shared.** ``per_sample=False`` (``solve(..., per_sample=False)``) replaces each sample's
error ratio by the RMS over the running samples, so the batch shares one step (torchdiffeq's and torchsde's
control), for comparison.

**denoise.** With ``options={"denoise": True}`` (a :class:`sdekit.LinearSDE` process) the samples that reached
``t_end`` are replaced there by the data prediction :math:`\hat x_0` (Tweedie's formula; one more evaluation,
counted), as the fixed-step loop does.

**save_at.** Each sample's step is clipped to land on the next ``save_at`` time, so saved states are
exact states of the method, per sample; a sample stopped (``max_steps``) before a save time has NaN there.
"""

import math

import torch

from .._errors import InvalidParameterError, MethodArgumentError
from .._evaluator import finite_rows
from .._solution import STATUS, Outcome, Result
from ._control import shared_ratio
from ._loop import _noise, denoise_and_frame

SYNC_EVERY = 2
_RUNNING = -1
_SUCCESS, _MAX_STEPS, _NON_FINITE, _DT_TOO_SMALL = (STATUS.index(r) for r in (
    Result.SUCCESS, Result.MAX_STEPS, Result.NON_FINITE, Result.DT_TOO_SMALL))
_LAST = 1.01          # a step within 1% of the distance left goes all the way (no sliver steps)
_ATTEMPTS = 4         # the most attempts a sample makes: this many times max_steps


def run_adaptive(stepper_class, method, pb):
    """Integrate ``pb`` (a :class:`~sdekit._methods.Problem` with ``rtol``/``atol``) with a step size per sample."""
    if not pb.adaptive:
        raise MethodArgumentError(f"{method.name} adapts its step: give rtol=/atol= (dt= sets the first step)")
    proc = pb.process
    options = dict(pb.options)
    sync_every = options.pop("sync_every", SYNC_EVERY)
    if isinstance(sync_every, bool) or not isinstance(sync_every, int) or sync_every < 1:
        raise InvalidParameterError(f"option sync_every must be a positive integer (iterations between host "
                                    f"reads), got {sync_every!r}")
    if options.pop("hook", None) is not None:
        raise MethodArgumentError(f"{method.name} gives every sample its own times, so a per-step hook does not "
                                  f"apply; use a fixed-step method for imputation hooks")
    denoise, frame = denoise_and_frame(options, stepper_class, method, proc)
    x = pb.x0
    noise = _noise(pb, x) if stepper_class.kind == "sde" and proc.kind == "sde" else None
    stepper = stepper_class(frame, noise, options)
    stepper.bind(proc, pb.rtol, pb.atol)
    controller = stepper.controller()
    shared = pb.per_sample is False
    outcome = _Loop(stepper, controller, pb, x, shared, sync_every).run()
    if denoise:
        _denoise(outcome, frame, pb)
    return outcome


def _denoise(outcome, frame, pb):
    r"""Replace the samples that reached ``t_end`` by the data prediction :math:`\hat x_0` there (one evaluation)."""
    ev = pb.process.evaluator
    done = outcome.per_sample["status"] == _SUCCESS
    before = ev.nfe
    ev.step = None
    t = torch.full_like(outcome.per_sample["t"], pb.t_end)
    x0 = frame.data(outcome.x, t)
    outcome.x = torch.where(done.view((-1,) + (1,) * (x0.dim() - 1)), x0, outcome.x)
    outcome.per_sample["nfe"] = outcome.per_sample["nfe"] + (ev.nfe - before) * done
    outcome.stats["row_evaluations"] += (ev.nfe - before) * done.numel()


class _Loop:
    """One adaptive solve: the per-sample state, the iteration and the bookkeeping of finished samples."""

    def __init__(self, stepper, controller, pb, x, shared, sync_every):
        self.stepper, self.controller, self.pb, self.shared, self.k = stepper, controller, pb, shared, sync_every
        self.evaluator = pb.process.evaluator
        n, dev = x.shape[0], x.device
        f64 = dict(dtype=torch.float64, device=dev)
        self.n, self.f64 = n, f64
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
        self.targets_t = torch.tensor(targets, **f64)
        self.targets_u = clock(self.targets_t)
        self.last_target = len(targets) - 1
        span = max(abs(pb.t_start), abs(pb.t_end), 1.0)
        self.floor = max(pb.dt_min or 0.0, 64 * torch.finfo(torch.float64).eps * span)
        if stepper.noise is not None:   # no step inside one leaf of the keyed path, where values would share a normal
            self.floor = max(self.floor, stepper.noise.leaf)
        self.max_steps = pb.max_steps
        # the last slot takes the writes of samples that hit no save time; a sample that stops before a save
        # time (max_steps) has NaN there
        self.path = (torch.full((self.n_saves + 1,) + tuple(x.shape), math.nan, dtype=x.dtype, device=dev)
                     if self.n_saves else None)
        # the full batch, written back at every host read
        self.out = {"x": x.clone(), "t": torch.full((n,), pb.t_start, **f64),
                    "nfe": torch.zeros(n, dtype=torch.int64, device=dev),
                    "steps": torch.zeros(n, dtype=torch.int64, device=dev),
                    "rejected": torch.zeros(n, dtype=torch.int64, device=dev),
                    "status": torch.full((n,), _RUNNING, dtype=torch.int8, device=dev)}
        self.rows = torch.arange(n, dtype=torch.int64, device=dev)
        self.row_evaluations = 0
        self.syncs = 0

    # -- the loop ---------------------------------------------------------------------------
    def run(self):
        st, ev, pb = self.stepper, self.evaluator, self.pb
        ev.rows, ev.batch = self.rows, self.n
        a = {k: v.clone() for k, v in self.out.items()}          # the active rows (all of them at first)
        a["u"] = st.to_clock(a["t"])
        a["j"] = torch.zeros(self.n, dtype=torch.int64, device=a["t"].device)
        before = ev.nfe
        carry = st.start(a["x"], a["t"])
        if pb.dt0 is not None:
            t_first = a["t"] + math.copysign(pb.dt0, pb.t_end - pb.t_start)
            h = (st.to_clock(t_first) - a["u"]).abs()
        else:
            h = st.initial_step(a["x"], a["t"], pb.t_end, carry)
        h = h.detach().to(torch.float64)
        # a sample whose first evaluations (the carry, the initial step's) went non-finite stops here
        bad = self._failed(~torch.isfinite(h))
        a["status"] = torch.where(bad, _NON_FINITE, a["status"]).to(torch.int8)
        h = torch.where(bad, 1.0, h)
        a["h"] = torch.where(bad, math.inf, h).min().expand_as(h).clone() if self.shared else h
        a["prev"] = torch.ones(self.n, **self.f64)
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
        st = self.stepper
        x, t, u, h, j = a["x"], a["t"], a["u"], a["h"], a["j"]
        running = a["status"] == _RUNNING
        tgt_u, tgt_t = self.targets_u[j], self.targets_t[j]
        left = (tgt_u - u) * self.dir
        last = h * _LAST >= left
        h_try = torch.where(last, left, h)
        u_next = torch.where(last, tgt_u, u + self.dir * h)
        t_next = torch.where(last, tgt_t, st.from_clock(u_next))
        t_next = torch.where(running, t_next, t)            # finished samples: zero-length steps, discarded
        u_next = torch.where(running, u_next, u)
        before = self.evaluator.nfe
        x_new, err, carry_new = st.attempt(x, t, t_next, carry, iteration)
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
        keep = accepted.view((-1,) + (1,) * (x.dim() - 1))
        a["x"] = torch.where(keep, x_new, x)
        carry = {k: torch.where(accepted.view((-1,) + (1,) * (v.dim() - 1)), carry_new[k], v)
                 for k, v in carry.items()}
        a["t"] = torch.where(accepted, t_next, t)
        a["u"] = torch.where(accepted, u_next, u)
        proposed = self.controller.propose(h_try, err, a["prev"], accepted)
        # a step cut short to land on a target (a save_at time) does not shrink the next one
        proposed = torch.where(accepted & last, torch.maximum(proposed, h), proposed)
        a["h"] = torch.where(ok, proposed, h)
        a["prev"] = torch.where(accepted & ~(last & (h_try < h)), err, a["prev"])   # a cut step's error: not kept
        a["steps"] = a["steps"] + accepted
        a["rejected"] = a["rejected"] + rejected
        hit = accepted & last
        if self.path is not None:
            slot = torch.where(hit & (j < self.n_saves), j, self.n_saves)
            self.path.index_put_((slot, self.rows), a["x"])
        reached = hit & (j == self.last_target)
        a["j"] = torch.where(hit, (j + 1).clamp_max(self.last_target), j)
        status = torch.where(bad, _NON_FINITE, a["status"])
        status = torch.where(reached, _SUCCESS, status)
        tiny = rejected & ((t_next - t).abs() <= self.floor)
        status = torch.where(tiny & (status == _RUNNING), _DT_TOO_SMALL, status)
        out_of_steps = (a["steps"] >= self.max_steps) | (a["steps"] + a["rejected"] >= _ATTEMPTS * self.max_steps)
        a["status"] = torch.where(out_of_steps & (status == _RUNNING), _MAX_STEPS, status).to(torch.int8)
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
        a["nfe"] = a["nfe"] + cost * running

    def _read(self, a, carry):
        """The planned host read: write the active rows back, drop the finished ones, plan the next read.

        Returns the active rows, their carry and the iterations until the next read (0: every sample is done):
        ``sync_every``, or fewer when the running samples' distance left over their step size says that they
        finish sooner (so that a batch does not idle on zero-length steps after its last sample is done).
        """
        self.syncs += 1
        self._write_back(a)
        running = a["status"] == _RUNNING
        left = (self.targets_u[-1] - a["u"]) * self.dir
        estimate = torch.where(running, left / a["h"].clamp_min(1e-300), 0.0).max()
        host = torch.cat([running.to(torch.float64), estimate.view(1)]).cpu()   # the one device-to-host copy
        keep = host[:-1].nonzero().flatten()
        if keep.numel() == 0:
            return a, carry, 0
        estimate = float(host[-1])
        plan = math.ceil(min(estimate, 1e9) / _LAST) if math.isfinite(estimate) else self.k   # NaN: read at k
        next_read = int(min(self.k, max(1, plan)))
        if keep.numel() < self.rows.numel():
            keep = keep.to(self.rows.device)
            a = {k: v[keep] for k, v in a.items()}
            carry = {k: v[keep] for k, v in carry.items()}
            self.rows = self.rows[keep]
            self.evaluator.rows = self.rows
            noise = self.stepper.noise
            if noise is not None:
                self.stepper.noise = noise.rows(keep)
        return a, carry, next_read

    def _write_back(self, a):
        for k, v in self.out.items():
            v.index_copy_(0, self.rows, a[k])

    def _outcome(self, iterations):
        out, pb = self.out, self.pb
        status = out["status"].cpu()
        t = out["t"].cpu()
        result, detail = Result.SUCCESS, ""
        for code, words in ((_NON_FINITE, "a non-finite value (x keeps their last finite state)"),
                            (_MAX_STEPS, f"max_steps={pb.max_steps} accepted steps"),
                            (_DT_TOO_SMALL, f"a step below dt_min={self.floor:.3g}")):
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
        usable = status != _NON_FINITE
        t_usable = t[usable] if bool(usable.any()) else t
        t_reached = float(t_usable[(t_usable - pb.t_end).abs().argmax()])
        path = [] if self.path is None else list(self.path[:self.n_saves].unbind(0))
        per_sample = {k: out[k] for k in ("nfe", "steps", "rejected", "t")}
        per_sample["status"] = out["status"].clamp_min(0)
        nfe = out["nfe"].double()
        stats = {"nfe_mean": float(nfe.mean()), "nfe_max": int(out["nfe"].max()),
                 "row_evaluations": self.row_evaluations, "syncs": self.syncs, "sync_every": self.k,
                 "iterations": iterations, "steps_total": int(out["steps"].sum()),
                 "rejected_total": int(out["rejected"].sum())}
        return Outcome(out["x"], t_reached, path, steps=int(out["steps"].max()), rejected=int(out["rejected"].max()),
                       result=result, detail=detail, per_sample=per_sample, stats=stats)
