r"""diffusers models: ``from_diffusers(unet, scheduler)`` -> an adapter on the scheduler's ᾱ table.

The UNet's timestep ``n`` is sdekit's time :math:`t_n = (n + 1)/N` on :class:`~sdekit.adapters.DiscreteVPSDE`
(the table :math:`\bar\alpha_n` of the scheduler, ``T = 1``, ``eps = 1/N``); the network sees the nearest
integer timestep (``quantise=True``), so on a diffusers grid it sees exactly what diffusers feeds it.
:meth:`DiffusersAdapter.grid` maps a diffusers timestep sequence to sdekit times; diffusers' last step to
:math:`\bar\alpha = 1` (DDIM's ``set_alpha_to_one``, DPM-Solver's ``final_sigmas_type="zero"``) is the
data prediction at the last timestep, which sdekit takes with ``options={"denoise": True}``
(:attr:`DiffusersAdapter.final_denoise`).

diffusers' sampling loop is reproduced only by :meth:`DiffusersAdapter.solve_arguments`
(``solve(x_T, **adapter.solve_arguments(scheduler))``); a solve on sdekit's own grid (``steps=``) is the
continuous-time probability flow of the same table, not diffusers' discrete loop, and the adapter warns once
when the network is evaluated between the scheduler's timesteps.
"""

import warnings

import torch

from sdekit import ArgumentTypeError, InvalidParameterError
from sdekit._stepping._dpmpp_multistep import step_orders

from ._adapter import Adapter
from ._discrete import DiscreteVPSDE

__all__ = ["DiffusersAdapter", "from_diffusers"]

_PREDICTIONS = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}


def _config(scheduler):
    config = getattr(scheduler, "config", scheduler)
    if not hasattr(config, "get"):
        raise ArgumentTypeError(f"scheduler must be a diffusers scheduler or its config (a dict), got "
                                f"{type(scheduler).__name__}")
    return dict(config)


def _alphas_cumprod(scheduler, config):
    table = getattr(scheduler, "alphas_cumprod", None)
    if isinstance(table, torch.Tensor):
        return table
    try:
        from diffusers import DDPMScheduler
    except ImportError:     # pragma: no cover - the extra is installed wherever a diffusers model exists
        raise InvalidParameterError("building the table from a scheduler config needs diffusers: "
                                    "pip install 'sdekit[diffusers]', or pass the scheduler itself")
    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
            "rescale_betas_zero_snr")
    return DDPMScheduler(**{k: config[k] for k in keys if k in config}).alphas_cumprod


class _UNet:
    """``unet(x, timestep, **inputs).sample``, the first half of the channels for a learned-variance UNet."""

    def __init__(self, unet, split):
        self.unet, self.split = unet, split

    def __call__(self, x, tau, **inputs):
        out = self.unet(x, tau, **inputs)
        out = out.sample if hasattr(out, "sample") else out
        if self.split and isinstance(out, torch.Tensor) and out.dim() > 1 and out.shape[1] == 2 * x.shape[1]:
            out = out[:, :x.shape[1]]
        return out


#: How far (in timesteps) an evaluation may sit from an integer timestep and still count as on the scheduler's
#: grid: float32 times of the table's own timesteps are within N * 2**-24 of them.
OFF_GRID = 1e-2


class DiffusersAdapter(Adapter):
    """An :class:`~sdekit.adapters.Adapter` for a diffusers UNet, with the scheduler's timestep clock.

    **diffusers' discrete-time loop is reproduced only through** :meth:`solve_arguments`::

        scheduler.set_timesteps(50)
        x = sdekit.probability_flow(adapter.sde, adapter).solve(x_T, **adapter.solve_arguments(scheduler)).x

    A plain ``solve(x_T, method="ddim", steps=10)`` is sdekit's solve of the continuous probability flow of
    the table :math:`\\bar\\alpha_n`: its times fall between diffusers' integer timesteps (the UNet sees the
    nearest one) and it has no final step to :math:`\\bar\\alpha = 1`, so it is not diffusers' sampler (on a
    DDIM config the two differ by more than the sample itself).  Any sdekit method on diffusers' timesteps:
    ``grid=adapter.grid(scheduler.timesteps), options=dict(denoise=adapter.final_denoise)``.  The first time
    the network is evaluated between the table's timesteps, the adapter says so once (a ``UserWarning``).

    ``final_denoise`` is true when the scheduler's last step goes to :math:`\\bar\\alpha = 1`: solve with
    ``options={"denoise": adapter.final_denoise}`` to take it.  ``config`` is the scheduler's config.
    """

    def _network_time(self, t64):
        warned = self.__dict__.setdefault("_off_grid_warned", [False])     # shared by with_inputs() views
        if warned[0] or self.time.name != "index":
            return self.time.to_network(t64)
        tau, off = self.time.network_index(t64)
        if off > OFF_GRID:
            warned[0] = True
            raw = self.sde.index(t64)
            k = int((raw - torch.round(raw)).abs().argmax())
            seen = f"sees timestep {int(tau[k])}" if self.time.quantise else "sees that fractional timestep"
            warnings.warn(
                f"this diffusers adapter is evaluated at t = {float(t64[k]):.6g}, timestep {float(raw[k]):.6g}, "
                f"between its scheduler's integer timesteps (the UNet {seen}): this solve is not diffusers' "
                f"discrete-time loop.  To reproduce the scheduler, call scheduler.set_timesteps(steps) and solve "
                f"with sdekit.probability_flow(adapter.sde, adapter).solve(x_T, **adapter.solve_arguments("
                f"scheduler)); for any sdekit method on diffusers' timesteps pass "
                f"grid=adapter.grid(scheduler.timesteps).  (Said once per adapter.)", UserWarning, stacklevel=3)
        return tau

    def __repr__(self):
        return (f"DiffusersAdapter(prediction={self.prediction.name!r}, time={self.time!r}, sde={self.sde!r}, "
                f"final_denoise={getattr(self, 'final_denoise', None)}; diffusers' discrete-time loop is reproduced "
                f"only by probability_flow(adapter.sde, adapter).solve(x_T, **adapter.solve_arguments(scheduler)) "
                f"after scheduler.set_timesteps(steps))")

    def grid(self, timesteps) -> torch.Tensor:
        """sdekit times (float64, decreasing) for a diffusers timestep sequence (a tensor, list or scheduler).

        Timestep ``n`` maps to :math:`(n+1)/N`.  The scheduler's last step, to :math:`\\bar\\alpha_0` (the
        time :math:`1/N`) when ``set_alpha_to_one=False`` or ``final_sigmas_type="sigma_min"``, is appended;
        its last step to :math:`\\bar\\alpha = 1` is not a grid point (reverse processes end at ``t > 0``)
        but ``denoise=True`` (:attr:`final_denoise`).
        """
        return self._grid(timesteps, self.final_denoise)

    def _grid(self, timesteps, final_denoise: bool) -> torch.Tensor:
        ts = getattr(timesteps, "timesteps", timesteps)
        ts = torch.as_tensor(ts).detach().cpu()
        if ts.dim() != 1 or ts.numel() < 1 or ts.is_floating_point() and not bool((ts == ts.round()).all()):
            raise InvalidParameterError("timesteps must be a 1-D sequence of integer diffusers timesteps")
        n = self.sde.n
        if bool(((ts < 0) | (ts > n - 1)).any()):
            raise InvalidParameterError(f"timesteps must lie in the table 0..{n - 1}, got {ts.tolist()}")
        times = self.sde.time(ts.to(torch.float64))
        if not final_denoise and int(ts[-1]) != 0:
            times = torch.cat([times, torch.tensor([self.sde.eps], dtype=torch.float64)])
        if times.numel() < 2 or not bool((times[1:] < times[:-1]).all()):
            raise InvalidParameterError("timesteps must be strictly decreasing, with at least one step to take")
        return times

    def solve_arguments(self, scheduler) -> dict:
        """``method``, ``grid`` and ``options`` for ``solve()`` that reproduce ``scheduler``'s sampling loop.

        For a ``DDIMScheduler`` (``eta=0``, ``leading`` or ``trailing`` spacing) and a
        ``DPMSolverMultistepScheduler`` (``dpmsolver++``, order 2) after ``set_timesteps``; the result equals
        diffusers' loop on the same UNet and noise to float32 rounding.  Configurations sdekit cannot
        reproduce are refused with the reason (see the adapters documentation)::

            sdekit.probability_flow(adapter.sde, adapter).solve(x_T, **adapter.solve_arguments(scheduler))
        """
        name, config = type(scheduler).__name__, _config(scheduler)
        if getattr(scheduler, "timesteps", None) is None or getattr(scheduler, "num_inference_steps", None) is None:
            raise InvalidParameterError("call scheduler.set_timesteps(steps) first")
        if config.get("clip_sample") or config.get("thresholding"):
            raise InvalidParameterError("the scheduler clips or thresholds x0 (clip_sample, thresholding), which "
                                        "sdekit does not: build it with clip_sample=False, thresholding=False")
        grid = self._grid(scheduler.timesteps, final_to_one(config))
        if name == "DDIMScheduler":
            if config.get("timestep_spacing") == "linspace":
                raise InvalidParameterError(
                    "DDIMScheduler with timestep_spacing='linspace' steps from n to n - N//steps but evaluates the "
                    "UNet at the next listed timestep, which differs; use 'leading' or 'trailing'")
            return dict(method="ddim", grid=grid, options=dict(denoise=final_to_one(config)))
        if name == "DPMSolverMultistepScheduler":
            if config.get("algorithm_type") != "dpmsolver++" or config.get("solver_order") != 2 or any(
                    config.get(k) for k in ("use_karras_sigmas", "use_lu_lambdas", "use_exponential_sigmas",
                                            "use_beta_sigmas", "use_flow_sigmas", "euler_at_final")):
                raise InvalidParameterError(
                    "sdekit reproduces DPMSolverMultistepScheduler with algorithm_type='dpmsolver++', "
                    "solver_order=2 and sigmas from the timesteps; for order 3 sdekit's dpmpp_3m weights the "
                    "second difference by 2*phi_3 (diffusers: phi_3), so it differs by design")
            n = len(scheduler.timesteps)
            if final_to_one(config):      # diffusers' last step is first order: sdekit's denoise
                return dict(method="dpmpp_2m", grid=grid, options=dict(denoise=True, lower_order_final=False))
            lowers = bool(config.get("lower_order_final", True)) and n < 15
            theirs = [1] + [2] * (n - 1)       # a first-order first step; the last one too where diffusers lowers it
            if lowers:
                theirs[-1] = 1
            lam = self.sde.log_snr(grid)
            for lower_order_final in (False, True):   # warm-up only, or orders that follow the grid's log-SNR steps
                if step_orders(lam, 2, lower_order_final) == theirs:
                    return dict(method="dpmpp_2m", grid=grid, options=dict(lower_order_final=lower_order_final))
            raise InvalidParameterError(
                f"with final_sigmas_type='sigma_min' and {n} steps diffusers lowers only its last step, and "
                f"sdekit's lower_order_final, which follows the grid's log-SNR steps, lowers others too on this "
                f"grid: use final_sigmas_type='zero' or at least 15 steps")
        raise InvalidParameterError(f"solve_arguments reproduces DDIMScheduler and DPMSolverMultistepScheduler, "
                                    f"not {name}; use adapter.grid(scheduler.timesteps) with any sdekit method")


def final_to_one(config) -> bool:
    """Whether a scheduler's last step goes to alpha_bar = 1 (``set_alpha_to_one``, ``final_sigmas_type="zero"``)."""
    return bool(config.get("set_alpha_to_one", True)) and config.get("final_sigmas_type", "zero") == "zero"


def from_diffusers(unet, scheduler, quantise: bool = True, inputs=None) -> DiffusersAdapter:
    """An adapter for a diffusers ``unet`` trained with ``scheduler`` (a scheduler or its config).

    **Arguments**

    - ``unet``: a diffusers ``UNet2DModel``, ``UNet2DConditionModel`` or any module called as
      ``unet(x, timestep, **inputs)`` returning ``.sample``.  A learned-variance UNet (twice the channels,
      ``variance_type`` ``learned`` or ``learned_range``) is read through its first half.
    - ``scheduler``: its ``alphas_cumprod`` table (or ``num_train_timesteps``, ``beta_*`` and
      ``trained_betas`` of a config) gives the :class:`~sdekit.adapters.DiscreteVPSDE`; ``prediction_type``
      the parameterisation (``epsilon``, ``sample``, ``v_prediction``).
    - ``quantise``: hand the UNet integer timesteps (default), as diffusers does.
    - ``inputs``: keyword inputs of every UNet call (``encoder_hidden_states=``, ``class_labels=``).

    sdekit does not clip or threshold :math:`\\hat x_0` (``clip_sample``, ``thresholding``): configure the
    scheduler without them to compare with diffusers.

    **diffusers' discrete timesteps are reproduced only through** :meth:`DiffusersAdapter.solve_arguments`::

        scheduler.set_timesteps(50)
        x = sdekit.probability_flow(adapter.sde, adapter).solve(x_T, **adapter.solve_arguments(scheduler)).x

    ``solve(x_T, method="ddim", steps=10)`` solves the continuous flow of the same table on sdekit's own grid:
    between diffusers' timesteps and without its final step, so far from diffusers' DDIM (the adapter warns
    once when that happens).
    """
    config = _config(scheduler)
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in _PREDICTIONS:
        raise InvalidParameterError(f"unknown diffusers prediction_type {prediction!r}; sdekit reads "
                                    f"{', '.join(_PREDICTIONS)}")
    if not callable(unet):
        raise ArgumentTypeError(f"unet must be a diffusers UNet (callable), got {type(unet).__name__}")
    sde = DiscreteVPSDE(_alphas_cumprod(scheduler, config).to(torch.float64), quantise=quantise)
    split = config.get("variance_type") in ("learned", "learned_range")
    adapter = DiffusersAdapter(_UNet(unet, split), sde, _PREDICTIONS[prediction], "index", inputs=inputs)
    adapter.config = config
    adapter.unet = unet
    adapter.final_denoise = final_to_one(config)
    return adapter
