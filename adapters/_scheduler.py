r"""``DiffusersScheduler``: sdekit's samplers inside diffusers' own pipelines, as a diffusers scheduler.

A diffusers pipeline owns the network call and the loop ``for t in scheduler.timesteps: model_output =
unet(x, t); x = scheduler.step(model_output, t, x).prev_sample``; sdekit's :func:`sdekit.solve` owns a loop of
its own, which asks for the score at the times its method chooses.  The scheduler runs the real ``solve``,
unchanged, on a worker thread and turns control inside out: the solve's network is a stand-in that hands the
state of each evaluation to the pipeline and waits for the pipeline's ``model_output``.  So the pipeline's result *is*
``sdekit.probability_flow(adapter.sde, adapter).solve(x_T, method=M, steps=N, ...)`` with
``adapter = from_diffusers(unet, config)`` (or ``sdekit.reverse`` for a stochastic method), for every fixed-step
method, single-step, multistep and multi-evaluation alike, and no sampler is written twice:

- ``set_timesteps(N)`` runs the solve once on a one-number state with a recording score function (a dry run,
  cached: a fixed-step method's evaluation times do not depend on the state) and lists, in ``timesteps``, the
  timestep the adapter hands the UNet at each evaluation time :math:`t`: the nearest integer to
  :math:`tN_{train} - 1` (the fractional one with ``quantise=False``).  One entry per evaluation: the pipeline's
  progress bar counts NFE.
- The first ``step()`` starts the solve from its ``sample`` (:math:`x_T`); every ``step()`` gives the waiting
  evaluation its ``model_output`` and returns, as ``prev_sample``, the state at which the solve asks next (the
  final sample after the last evaluation).  The output becomes the score through the adapter of
  :func:`~sdekit.adapters.from_diffusers` itself (its parameterisation, ε, x̂₀ or v, its learned-variance split
  and its :math:`\alpha(t)`, :math:`\sigma(t)`, computed once a run at the plan's times).
- A new ``set_timesteps`` (or the scheduler's collection) cancels a solve a pipeline abandoned; an exception
  inside the solve is raised by ``step()``; the batch, device and dtype of a run are the first ``sample``'s.

Stochastic methods draw sdekit's keyed noise, whose 64-bit seed is drawn from the pipeline's ``generator`` at
the first ``step()`` (or fixed by ``seed=``): a seeded pipeline repeats bit for bit and sample ``i`` of a batch
gets the noise of index ``i`` whatever the batch.
"""

import numbers
import queue
import threading
import weakref

import torch

import sdekit
from sdekit import ArgumentTypeError, InvalidParameterError, MethodArgumentError
from sdekit._methods import lookup

from ._adapter import network_output
from ._diffusers import from_diffusers

try:
    from diffusers import ConfigMixin, SchedulerMixin
    from diffusers.configuration_utils import register_to_config
    from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerOutput
except ImportError as err:     # pragma: no cover - the extra is installed wherever a pipeline exists
    raise ImportError("sdekit.adapters.DiffusersScheduler needs diffusers: pip install 'sdekit[diffusers]'") from err

__all__ = ["DiffusersScheduler"]

_PROCESSES = ("probability_flow", "reverse")
_VALIDATION_STEPS = 10          # the grid on which a new scheduler checks its method and options


class _Cancelled(BaseException):
    """Raised inside an abandoned solve's network call to end its thread (a BaseException: nothing catches it)."""


class _Channel:
    """The two queues between the pipeline's thread and the solve's thread, and the solve's network stand-in.

    Called as the network, ``channel(x, k)`` posts ``("ask", x, k)`` (the state of evaluation ``k``) to the
    pipeline and blocks until the pipeline's output arrives.  It holds no reference to the scheduler, so an
    abandoned scheduler is collected and its finaliser cancels the solve.
    """

    def __init__(self):
        self.to_pipeline, self.to_solve = queue.SimpleQueue(), queue.SimpleQueue()

    def __call__(self, x, k, **inputs):
        self.to_pipeline.put(("ask", x, k))
        out = self.to_solve.get()
        if out is _Cancelled:
            raise _Cancelled()
        return out

    def cancel(self):
        self.to_solve.put(_Cancelled)


def _solve_on_thread(channel, solve, x_T):
    try:
        solution = solve(x_T)
    except _Cancelled:
        return
    except BaseException as err:        # handed to the pipeline's thread, raised there by step()
        channel.to_pipeline.put(("error", err))
        return
    channel.to_pipeline.put(("done", solution))


def _cancel(channel, thread):
    channel.cancel()
    thread.join()


def _rounding_apart(sample, x):
    """Whether the pipeline's initial ``sample`` is the state of the solve's first evaluation up to rounding: a
    method that steps in another frame evaluates first at, say, :math:`\\alpha(x_T/\\alpha)`, which is
    :math:`x_T` to a few ulps; the pipeline's output at :math:`x_T` then stands for it, a difference of the
    same size."""
    if sample.shape != x.shape or sample.dtype != x.dtype or sample.device != x.device:
        return False
    eps = torch.finfo(x.dtype).eps if x.is_floating_point() else 0.0
    return bool((sample - x).abs().max() <= 16 * eps * x.abs().max())


class _TimeRecorder:
    """The dry run's score function: records the time of every call; the score of N(0, I) (finite and non-zero, so
    that a method whose step sizes follow the score's norm, Langevin's corrector, plans too)."""

    def __init__(self):
        self.times = []

    def __call__(self, x, t):
        self.times.append(t[:1])
        return -x


class _PlannedScore:
    r"""A run's score function: its ``k``-th call is the plan's ``k``-th evaluation.

    It hands ``(x, k)`` to the pipeline through the adapter's network (the channel, behind
    :func:`~sdekit.adapters.from_diffusers`'s learned-variance split) and turns the pipeline's output into the score
    with the adapter's own parameterisation and its coefficients :math:`\alpha(t_k)`, :math:`\sigma(t_k)`, computed
    by ``adapter.coefficients`` once for the run at the plan's times (the times the solve hands over, in its model
    dtype), so a call makes no host synchronisation and no float64 arithmetic.
    """

    def __init__(self, adapter, coefficients):
        self.adapter, self.coefficients, self.calls = adapter, coefficients, 0

    def __call__(self, x, t):
        k = self.calls
        if k >= len(self.coefficients):
            raise InvalidParameterError(f"the solve asked for more than the {len(self.coefficients)} evaluations "
                                        f"set_timesteps planned; report this with the method and its options")
        self.calls += 1
        c = self.coefficients[k]
        prediction = self.adapter.prediction
        out = self.adapter.network(prediction.network_state(x, c), k)
        return prediction.score(network_output(out, x, "the pipeline's model_output"), x, c)


class _Run:
    """One pipeline loop: the solve's thread and channel, the request it waits on, where the loop stands."""

    def __init__(self, channel, thread, finaliser):
        self.channel, self.thread, self.finaliser = channel, thread, finaliser
        self.pending = None          # (x, k): the state of the evaluation the solve waits on, and its number
        self.first = True

    def receive(self):
        kind, *rest = self.channel.to_pipeline.get()
        if kind == "error":
            self.finaliser.detach()
            self.thread.join()
            raise rest[0]
        if kind == "done":              # the thread ends by itself: its last act was this message
            self.finaliser.detach()
            self.pending = None
            return rest[0]
        self.pending = (rest[0], rest[1])
        return None

    def cancel(self):
        if self.finaliser.alive:
            self.finaliser()


def _resolve(method, process):
    """The :class:`sdekit.Method` that ``solve(method=...)`` uses for ``method`` on ``process``, and the process."""
    if not isinstance(method, str):
        raise ArgumentTypeError(f"method must be a method name (a string, see sdekit.methods()), got "
                                f"{type(method).__name__}")
    if process is not None and process not in _PROCESSES:
        raise InvalidParameterError(f"process must be 'probability_flow' (deterministic samplers) or 'reverse' "
                                    f"(stochastic samplers), got {process!r}")
    m = lookup(method, "sde" if process == "reverse" else "ode")    # solve()'s own lookup and suggestions
    if process is None:
        process = "probability_flow" if "ode" in m.accepts else "reverse"
    kind = "ode" if process == "probability_flow" else "sde"
    if m.stepping == "adaptive":
        raise MethodArgumentError(f"{m.name} adapts its steps, but a diffusers pipeline needs every timestep before "
                                  f"its loop starts: use a fixed-step method ({', '.join(_fixed_names())})")
    if kind not in m.accepts:
        other = "reverse" if kind == "ode" else "probability_flow"
        raise MethodArgumentError(f"{m.name} integrates the {'reverse SDE' if kind == 'ode' else 'probability flow'} "
                                  f"only: use process={other!r} (or leave process unset)")
    if kind == "sde" and m.backend != "sdekit":
        raise MethodArgumentError(f"{m.qualified_name} draws torchsde's noise, which is not keyed per sample; use one "
                                  f"of sdekit's stochastic samplers (euler_ancestral, dpmpp_2m_sde, dpmpp_sde, "
                                  f"edm_stochastic, restart, ddim with eta, pc)")
    return m, process


def _fixed_names():
    """The fixed-step methods a scheduler takes (torchsde's on the flow only), named when refusing an adaptive one."""
    return sorted({m.name for m in sdekit.methods()
                   if m.stepping != "adaptive" and (m.backend == "sdekit" or "ode" in m.accepts)})


def _grid_list(grid):
    """An explicit grid as a list of floats (JSON-serialisable for the config); its checks are solve()'s."""
    if grid is None:
        return None
    if isinstance(grid, torch.Tensor):
        grid = grid.detach().to("cpu", torch.float64).reshape(-1).tolist()
    try:
        values = [float(v) for v in grid]
    except (TypeError, ValueError):
        raise InvalidParameterError(f"grid must be a 1-D sequence of times, decreasing from 1 to the last time "
                                    f"(sdekit time t = (timestep + 1)/num_train_timesteps), got {type(grid).__name__}")
    if len(values) < 2:
        raise InvalidParameterError(f"grid must hold at least two times (one step), got {values}")
    return values


def _seed_from(generator):
    """One seed in [0, 2**64) drawn from ``generator`` (the first of a list; torch's global one when ``None``)."""
    if isinstance(generator, (list, tuple)):
        generator = generator[0] if generator else None
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ArgumentTypeError(f"generator must be a torch.Generator (or a list of them), got "
                                f"{type(generator).__name__}")
    device = generator.device if generator is not None else "cpu"
    hi, lo = torch.randint(0, 2 ** 32, (2,), generator=generator, device=device, dtype=torch.int64).tolist()
    return (hi << 32) | lo


class DiffusersScheduler(SchedulerMixin, ConfigMixin):
    r"""A diffusers scheduler whose steps are sdekit's: any fixed-step sdekit method inside any diffusers pipeline.

    ::

        from sdekit.adapters import DiffusersScheduler
        pipe.scheduler = DiffusersScheduler.from_config(pipe.scheduler.config, method="dpmpp_3m")
        images = pipe(prompt, num_inference_steps=10).images

    The pipeline's result is, to float32 rounding, sdekit's own solve on the same network and initial noise
    :math:`x_T`, with ``adapter = from_diffusers(unet, config, quantise=quantise)``:

    .. code-block:: python

        process = sdekit.probability_flow(adapter.sde, adapter)   # sdekit.reverse(...) for stochastic methods
        process.solve(x_T, method=method, steps=N, schedule=schedule, grid=grid, options=options, seed=seed)

    on :class:`~sdekit.adapters.DiscreteVPSDE`, the table :math:`\bar\alpha_n` of the config, where
    timestep :math:`n` is :math:`t_n = (n + 1)/N_{train}`: the probability flow
    :math:`dx = [f(t)x - \tfrac12 g(t)^2\nabla\log p_t(x)]\,dt` (or the reverse SDE) from :math:`t = 1` to
    :math:`1/N_{train}`, with the score from the network's output (:math:`\nabla\log p_t = -\hat\varepsilon/\sigma`
    for ε prediction; x̂₀ and v as in :func:`~sdekit.adapters.from_diffusers`).  The UNet sees the nearest integer
    timestep of each evaluation time, which ``timesteps`` lists, one entry per evaluation.

    **Arguments** (all kept in ``config``; ``from_config(other_scheduler.config, method=...)`` reads the table)

    - ``num_train_timesteps``, ``beta_start``, ``beta_end``, ``beta_schedule``, ``trained_betas``,
      ``rescale_betas_zero_snr``: the training table, as diffusers' ``DDPMScheduler`` reads them;
      ``prediction_type``: ``"epsilon"``, ``"sample"`` or ``"v_prediction"``; ``variance_type``:
      ``"learned"``/``"learned_range"`` reads the first half of the output's channels.
    - ``method``: a fixed-step method of :func:`sdekit.methods` (default ``"dpmpp_2m"``).
    - ``schedule``: how ``set_timesteps(N)`` spaces the grid (``"logsnr"``, ``"karras"``, ``"uniform"``,
      ``"quadratic"``; default: the method's own); ``grid``: explicit sdekit times (decreasing, from at most 1),
      used instead, for an optimised schedule say.
    - ``options``: the method's options (``solve(options=...)``), e.g. ``{"lower_order_final": False}``.
    - ``seed``: the keyed noise's seed for stochastic methods; default ``None``, drawn from the pipeline's
      ``generator`` at the first step.
    - ``process``: ``"probability_flow"`` or ``"reverse"``; default: the flow for methods that integrate it,
      else the reverse SDE (``ddim`` with ``options={"eta": 1}`` needs ``"reverse"``).
    - ``quantise``: hand the UNet the nearest integer timestep of each evaluation (default, as diffusers' own
      schedulers do) or, with ``False``, its fractional timestep (float32 ``timesteps``).

    Bad input (an unknown or adaptive method, options the method does not take, a noise option on the
    probability flow, a bad grid) is refused here, with a one-line :class:`sdekit.SDEKitError`.
    """

    _compatibles = [e.name for e in KarrasDiffusionSchedulers]
    order = 1

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, prediction_type: str = "epsilon",
                 variance_type=None, rescale_betas_zero_snr: bool = False, method: str = "dpmpp_2m",
                 schedule=None, grid=None, options=None, seed=None, process=None, quantise: bool = True):
        if options is not None and not isinstance(options, dict):
            raise ArgumentTypeError(f"options must be a dict of the method's options, got {type(options).__name__}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
                                 or not 0 <= seed < 2 ** 64):
            raise InvalidParameterError(f"seed must be an integer in [0, 2**64) or None (drawn from the pipeline's "
                                        f"generator), got {seed!r}")
        if not isinstance(quantise, bool):
            raise InvalidParameterError(f"quantise must be True (integer timesteps) or False, got {quantise!r}")
        if grid is not None and schedule is not None:
            raise InvalidParameterError("give grid= (explicit times) or schedule= (how set_timesteps spaces its "
                                        "grid), not both")
        self.method, self.process = _resolve(method, process)
        self._grid = _grid_list(grid)
        self._options = dict(options or {})
        if seed is not None and self.process == "probability_flow":
            raise InvalidParameterError(f"seed= keys the noise of stochastic samplers; {self.method.name} on the "
                                        f"probability flow is deterministic: leave seed unset")
        table = {k: v for k, v in dict(self.config).items() if not k.startswith("_")}
        # the table of the config, through from_diffusers itself: the same DiscreteVPSDE as the reference adapter
        self.alphas_cumprod = from_diffusers(_TimeRecorder(), table).sde.alphas_cumprod
        self.init_noise_sigma = 1.0         # the VP prior N(0, I)
        self.timesteps = None
        self.num_inference_steps = None
        self.times = None                   # float64 sdekit time of every evaluation
        self.grid = None                    # an explicit grid of this plan (None: the schedule's)
        self.solution = None                # the last finished run's sdekit.Solution
        self._plans = {}
        self._planned = None
        self._step_index = None
        self._begin_index = 0
        self._run = None
        self._plan(self._grid and len(self._grid) - 1 or _VALIDATION_STEPS, self._grid)   # refuse bad input now

    # -- what a pipeline reads ------------------------------------------------------------------
    def __len__(self):
        return self.config.num_train_timesteps

    @property
    def step_index(self):
        """The number of evaluations handed to the solve in this run (``None`` before the first ``step``)."""
        return self._step_index

    @property
    def begin_index(self):
        """The first evaluation a pipeline runs (``set_begin_index``, for image-to-image); 0 by default."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0):
        """Start the next run at evaluation ``begin_index`` of ``timesteps`` (an image-to-image pipeline's
        ``t_start * order``): the solve then runs on the grid from the step that evaluation begins."""
        if self.timesteps is None:
            raise InvalidParameterError("call set_timesteps(num_inference_steps) before set_begin_index")
        if isinstance(begin_index, bool) or not isinstance(begin_index, numbers.Integral) or not (
                0 <= begin_index < len(self.timesteps)):
            raise InvalidParameterError(f"begin_index must be an integer in [0, {len(self.timesteps)}), "
                                        f"got {begin_index!r}")
        self._cancel()
        self._begin_index = int(begin_index)

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """``sample`` unchanged: the UNet of a VP table takes the state :math:`x_t` itself."""
        return sample

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        r""":math:`x_t = \sqrt{\bar\alpha_n}\,x_0 + \sqrt{1 - \bar\alpha_n}\,\varepsilon` at integer timesteps
        ``n`` (a number, or one per sample), computed in float64 and returned in ``original_samples``' dtype."""
        n = torch.as_tensor(timesteps, device="cpu").reshape(-1).long()
        if bool(((n < 0) | (n >= self.alphas_cumprod.numel())).any()):
            raise InvalidParameterError(f"timesteps must lie in 0..{self.alphas_cumprod.numel() - 1}, got "
                                        f"{n.tolist()}")
        ac = self.alphas_cumprod[n]
        shape = (-1,) + (1,) * (original_samples.dim() - 1)
        a = ac.sqrt().to(original_samples.device, original_samples.dtype).reshape(shape)
        s = (1 - ac).sqrt().to(original_samples.device, original_samples.dtype).reshape(shape)
        return a * original_samples + s * noise

    # -- the plan: every evaluation of the solve, known before the loop --------------------------
    def _process(self, sde, score_fn):
        make = sdekit.probability_flow if self.process == "probability_flow" else sdekit.reverse
        return make(sde, score_fn)

    def _solve_arguments(self, steps, grid, seed):
        args = dict(method=self.method.qualified_name, options=dict(self._options))
        if grid is not None:
            args["grid"] = grid
        else:
            args["steps"] = steps
            if self.config.schedule is not None:
                args["schedule"] = self.config.schedule
        if self.process == "reverse":
            args["seed"] = seed
        return args

    def _adapter(self, network):
        adapter = from_diffusers(network, self, quantise=self.config.quantise)
        adapter._off_grid_warned = [True]    # evaluating between integer timesteps is this scheduler's design
        return adapter

    def _plan(self, steps, grid, dtype=torch.float32):
        """The solve's evaluations, from a dry run on a one-number state (cached): their times as the solve hands
        them to the score (in the model-time ``dtype``: float32, or float64 for a float64 state), float64 sdekit
        times, the timesteps the UNet sees, the NFE and the grid steps."""
        key = (steps, None if grid is None else tuple(grid), dtype)
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        recorder = _TimeRecorder()
        adapter = self._adapter(recorder)
        solution = self._process(adapter.sde, recorder).solve(torch.ones(1, 1, dtype=dtype),
                                                              **self._solve_arguments(steps, grid, 0), throw=False)
        if not recorder.times:
            raise InvalidParameterError(f"{self.method.name} made no evaluation on this grid; give more steps")
        times = torch.cat(recorder.times)
        tau = adapter.time.to_network(times.double())          # what Adapter.output hands the UNet
        timesteps = tau.long() if self.config.quantise else tau.to(torch.float32)
        plan = dict(times=times, timesteps=timesteps, nfe=solution.nfe, steps=solution.steps)
        if len(self._plans) >= 32:
            self._plans.clear()
        self._plans[key] = plan
        return plan

    def set_timesteps(self, num_inference_steps=None, device=None, grid=None):
        """Plan a run of ``num_inference_steps`` steps of the method (or on ``grid``, explicit sdekit times; the
        config's ``grid`` when it has one): ``timesteps`` gets one entry per network evaluation, on ``device``.

        A run left unfinished (a pipeline interrupted mid-loop) is cancelled.  For ``dpm_solver_fast``
        ``num_inference_steps`` is its budget of evaluations, as in ``solve(steps=...)``.  The plan of a given
        ``num_inference_steps`` is computed once (a dry run of the solve) and reused.
        """
        self._cancel()
        grid = _grid_list(grid) if grid is not None else self._grid
        if grid is not None:
            if num_inference_steps is not None and int(num_inference_steps) != len(grid) - 1:
                raise InvalidParameterError(f"the grid has {len(grid) - 1} steps but num_inference_steps is "
                                            f"{num_inference_steps}: pass num_inference_steps={len(grid) - 1}")
            num_inference_steps = len(grid) - 1
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, numbers.Integral) or \
                num_inference_steps < 1:
            raise InvalidParameterError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
        plan = self._plan(int(num_inference_steps), grid)
        self.num_inference_steps = int(num_inference_steps)
        self.timesteps = plan["timesteps"].to(device) if device is not None else plan["timesteps"].clone()
        self._host_timesteps = plan["timesteps"].tolist()
        self.times = plan["times"].double()
        self.grid = torch.tensor(grid, dtype=torch.float64) if grid is not None else None
        self.order = max(1, plan["nfe"] // self.num_inference_steps)
        self._planned = (self.num_inference_steps, grid)
        self._step_index = None
        self._begin_index = 0

    # -- the loop ------------------------------------------------------------------------------
    def _cancel(self):
        if self._run is not None:
            self._run.cancel()
            self._run = None

    def _start(self, sample, generator):
        steps, grid = self._planned
        begin = self._begin_index
        if begin:
            steps, grid = None, self._begin_grid(begin)
        dtype = torch.float64 if sample.dtype == torch.float64 else torch.float32    # the model time's dtype
        plan = self._plan(steps, grid, dtype)
        if dtype == torch.float64 and not torch.equal(plan["timesteps"], self.timesteps[begin:].cpu()):
            raise InvalidParameterError("in float64 this solve rounds its evaluation times to other timesteps than "
                                        "the float32 plan: sample in float32, or give a grid whose times are not "
                                        "halfway between timesteps")
        seed = None
        if self.process == "reverse":
            seed = self.config.seed if self.config.seed is not None else _seed_from(generator)
        channel = _Channel()
        adapter = self._adapter(channel)
        like = torch.empty((len(plan["times"]),) + (1,) * (sample.dim() - 1), dtype=sample.dtype,
                           device=sample.device)
        c = adapter.coefficients(like, plan["times"].to(sample.device))
        coefficients = [type(c)(c.alpha[k:k + 1], c.sigma[k:k + 1]) for k in range(len(plan["times"]))]
        process = self._process(adapter.sde, _PlannedScore(adapter, coefficients))
        args = self._solve_arguments(steps, grid, seed)
        solve = lambda x_T: process.solve(x_T, **args)       # noqa: E731
        thread = threading.Thread(target=_solve_on_thread, args=(channel, solve, sample), daemon=True,
                                  name="sdekit-DiffusersScheduler")
        finaliser = weakref.finalize(self, _cancel, channel, thread)
        self._run = _Run(channel, thread, finaliser)
        self._step_index = begin
        thread.start()
        self._run.receive()

    def _begin_grid(self, begin):
        """The grid from the step whose first evaluation is ``begin``, checked by a dry run against the plan."""
        steps, grid = self._planned
        if grid is None:
            sde = self._adapter(_TimeRecorder()).sde
            grid = self.method.steps_grid(sde, steps, sde.T, sde.eps, self.config.schedule).tolist()
        j = begin // self.order
        sub = grid[j:]
        ok = begin % self.order == 0 and j < len(grid) - 1
        if ok:
            ok = torch.equal(self._plan(None, sub)["timesteps"], self.timesteps[begin:].cpu())
        if not ok:
            raise InvalidParameterError(f"begin_index={begin} is not the first evaluation of a step of "
                                        f"{self.method.name} (or its later evaluations differ from a solve started "
                                        f"there): start image-to-image at a multiple of order={self.order}")
        return sub

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator=None,
             return_dict: bool = True):
        """Hand ``model_output`` (the network at ``sample`` and ``timestep``, guidance applied) to the waiting
        evaluation of the solve; return the state the solve asks at next, or after the last evaluation its result.

        ``generator`` (the first step only) draws the keyed noise's seed of a stochastic method.  Returns
        diffusers' ``SchedulerOutput(prev_sample=...)``, or ``(prev_sample,)`` with ``return_dict=False``.
        """
        if self.timesteps is None:
            raise InvalidParameterError("call set_timesteps(num_inference_steps) before step()")
        if not isinstance(sample, torch.Tensor) or not isinstance(model_output, torch.Tensor):
            raise ArgumentTypeError(f"step(model_output, timestep, sample) takes tensors, got "
                                    f"{type(model_output).__name__} and {type(sample).__name__}")
        if self._run is None:
            if self._step_index is not None:
                raise InvalidParameterError(f"all {len(self.timesteps)} evaluations of this run are done: call "
                                            f"set_timesteps(...) to sample again")
            try:
                self._start(sample, generator)
            except BaseException:
                self._run = self._step_index = None
                raise
        run = self._run
        i = self._step_index
        expected = self._host_timesteps[i]
        given = timestep.reshape(-1)[:1].tolist() if isinstance(timestep, torch.Tensor) else [timestep]
        if not given or given[0] != expected:
            raise InvalidParameterError(f"step() was called with timestep {given} where evaluation {i} of this run "
                                        f"is at timestep {expected}: loop over scheduler.timesteps in order (call "
                                        f"set_timesteps(...) to start again)")
        x, k = run.pending
        if k != i - self._begin_index:       # the solve and the plan disagree: a method whose evaluations vary
            self._cancel()
            raise InvalidParameterError(f"the solve waits on evaluation {k + self._begin_index} where the pipeline "
                                        f"is at {i}; report this with the method and its options")
        if sample is not x and not (run.first and _rounding_apart(sample, x)):
            if sample.shape != x.shape or not torch.equal(sample, x):
                self._cancel()
                raise InvalidParameterError("the pipeline changed the latents between steps (an inpainting blend or a "
                                            "callback); the solve owns the state, so DiffusersScheduler cannot "
                                            "follow: run such pipelines with a diffusers scheduler")
        run.first = False
        run.channel.to_solve.put(model_output)
        try:
            done = run.receive()
        except BaseException:
            self._run = None
            raise
        self._step_index = i + 1
        if done is not None:
            self._run = None
            self.solution = done
            prev = done.x
        else:
            prev = run.pending[0]
        return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)

    def __getstate__(self):       # copies and pickles carry the plan, not a running solve: they start afresh
        state = dict(self.__dict__)
        state["_run"] = state["_step_index"] = None
        return state

    def __repr__(self):
        return (f"DiffusersScheduler(method={self.method.qualified_name!r}, process={self.process!r}, "
                f"schedule={self.config.schedule!r}, options={self._options}, "
                f"timesteps={None if self.timesteps is None else len(self.timesteps)} evaluations)")
