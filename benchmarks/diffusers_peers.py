r"""diffusers' schedulers as peers: any of them run on an sdekit ``LinearSDE`` with a given score.

A diffusers scheduler samples a discrete-time VP model: ``alphas_cumprod[k]`` for training steps
:math:`k = 0..K-1`, and a network that predicts :math:`\varepsilon` from :math:`(x^{vp}, \tau)`.  Any linear SDE
:math:`x_t = \alpha_t x_0 + \sigma_t\varepsilon` is such a model once it is read at :math:`t_k = (k+1)T/K`
and rescaled to unit total variance:

.. math::

   \bar\alpha_k = \frac{\alpha_{t_k}^2}{\alpha_{t_k}^2 + \sigma_{t_k}^2}, \qquad
   x^{vp} = \frac{x}{\sqrt{\alpha_t^2 + \sigma_t^2}}, \qquad
   \varepsilon(x^{vp}, \tau) = -\sigma_t\,\nabla\log p_t(x).

For the VP SDE the rescaling is the identity.  The network is called with the scheduler's own time value
:math:`\tau` (an integer timestep, a fractional one from a Karras or exponential spacing, or EDM's
:math:`c_{noise} = \tfrac14\log\tilde\sigma`), and :class:`EpsModel` reads back the noise level the
scheduler meant — :math:`\log\tilde\sigma` interpolated linearly in :math:`\tau` over the training table, as
diffusers' ``_sigma_to_t`` does — and evaluates the exact score at :math:`t = t(\lambda = -\log\tilde\sigma)`.
So a diffusers scheduler and an sdekit sampler see one and the same model at every noise level.

:func:`run` is the pipelines' loop (``init_noise_sigma``, ``scale_model_input``, ``step``) from an sdekit
:math:`x_T` to an sdekit state; :func:`sdekit_grid` gives the scheduler's noise levels as sdekit times, to pass
as ``grid=`` for a like-for-like comparison; :data:`PEERS` lists diffusers' ODE schedulers with their settings.

    from diffusers_peers import PEERS, make, run, sdekit_grid
    sched = make("dpmpp_2m", sde)                     # DPMSolverMultistepScheduler on the SDE's table
    x0, nfe, end = run(sched, sde, score, x_start, steps=10)
    grid = sdekit_grid(sched, sde)                    # the same levels, for sdekit's grid=
"""

import inspect
import math
from typing import Callable, Dict, Tuple

import numpy as np
import torch

TRAIN_STEPS = 1000

#: name -> (diffusers class name, its settings, family).  ``vp``: steps on x^{vp} with integer timesteps;
#: ``sigma``: steps on x/alpha (k-diffusion style) with timesteps from the table; ``edm``: EDM's c_noise.
#: Final levels are the table's smallest (``sigma_min``) wherever the scheduler lets one choose.
PEERS: Dict[str, Tuple[str, dict, str]] = {
    "ddim": ("DDIMScheduler", dict(set_alpha_to_one=False, clip_sample=False), "vp"),
    "pndm": ("PNDMScheduler", dict(skip_prk_steps=True, set_alpha_to_one=False), "vp"),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", dict(solver_order=2, final_sigmas_type="sigma_min"), "vp"),
    "dpmpp_3m": ("DPMSolverMultistepScheduler", dict(solver_order=3, final_sigmas_type="sigma_min"), "vp"),
    "dpm_solver_2m": ("DPMSolverMultistepScheduler", dict(solver_order=2, algorithm_type="dpmsolver",
                                                          final_sigmas_type="sigma_min"), "vp"),
    "dpmpp_2s": ("DPMSolverSinglestepScheduler", dict(solver_order=2, final_sigmas_type="sigma_min"), "vp"),
    "dpmpp_3s": ("DPMSolverSinglestepScheduler", dict(solver_order=3, final_sigmas_type="sigma_min"), "vp"),
    "unipc_bh1": ("UniPCMultistepScheduler", dict(solver_order=2, solver_type="bh1", final_sigmas_type="sigma_min"),
                  "vp"),
    "unipc_bh2": ("UniPCMultistepScheduler", dict(solver_order=2, solver_type="bh2", final_sigmas_type="sigma_min"),
                  "vp"),
    "unipc_bh1_3": ("UniPCMultistepScheduler", dict(solver_order=3, solver_type="bh1",
                                                    final_sigmas_type="sigma_min"), "vp"),
    "unipc_bh2_3": ("UniPCMultistepScheduler", dict(solver_order=3, solver_type="bh2",
                                                    final_sigmas_type="sigma_min"), "vp"),
    "deis_2": ("DEISMultistepScheduler", dict(solver_order=2), "vp"),
    "deis_3": ("DEISMultistepScheduler", dict(solver_order=3), "vp"),
    "euler": ("EulerDiscreteScheduler", dict(final_sigmas_type="sigma_min"), "sigma"),
    "heun": ("HeunDiscreteScheduler", dict(), "sigma"),
    "lms": ("LMSDiscreteScheduler", dict(), "sigma"),
    "dpm_2": ("KDPM2DiscreteScheduler", dict(), "sigma"),
    "edm_euler": ("EDMEulerScheduler", dict(final_sigmas_type="sigma_min"), "edm"),
    "edm_dpmpp_2m": ("EDMDPMSolverMultistepScheduler", dict(solver_order=2, final_sigmas_type="sigma_min"), "edm"),
    "edm_dpmpp_3m": ("EDMDPMSolverMultistepScheduler", dict(solver_order=3, final_sigmas_type="sigma_min"), "edm"),
}

#: The spacings a user meets in diffusers, as scheduler settings.
SPACINGS = {
    "linspace": dict(timestep_spacing="linspace"),
    "leading": dict(timestep_spacing="leading", steps_offset=1),
    "trailing": dict(timestep_spacing="trailing"),
    "karras": dict(use_karras_sigmas=True),
}


def table(sde, train_steps: int = TRAIN_STEPS) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""``(t_k, alphas_cumprod)`` in float64: the SDE read at :math:`t_k = (k+1)T/K`, rescaled to a VP table."""
    t = torch.arange(1, train_steps + 1, dtype=torch.float64) * (float(sde.T) / train_steps)
    lam = sde.log_snr(t)                                   # log(alpha / sigma)
    return t, torch.sigmoid(2 * lam)                       # alpha^2 / (alpha^2 + sigma^2)


def _config(sde, train_steps: int) -> dict:
    _, acp = table(sde, train_steps)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), acp[:-1]])
    betas = (1 - acp / prev).tolist()
    return dict(num_train_timesteps=train_steps, trained_betas=betas, prediction_type="epsilon")


def make(name: str, sde, spacing: str = "linspace", train_steps: int = TRAIN_STEPS, **settings):
    """diffusers' scheduler ``name`` (a key of :data:`PEERS`) on ``sde``'s table, with ``spacing`` (``SPACINGS``)."""
    import diffusers
    cls_name, base, family = PEERS[name]
    cls = getattr(diffusers, cls_name)
    if family == "edm":
        _, acp = table(sde, train_steps)
        levels = ((1 - acp) / acp).sqrt()
        config = dict(sigma_min=float(levels[0]), sigma_max=float(levels[-1]), sigma_data=1.0,
                      prediction_type="epsilon")
    else:
        config = dict(_config(sde, train_steps), **SPACINGS[spacing])
    accepted = set(inspect.signature(cls.__init__).parameters)
    config = {k: v for k, v in dict(config, **base, **settings).items() if k in accepted}
    scheduler = cls(**config)
    scheduler.sdekit_family = family
    return scheduler


class EpsModel:
    r"""The exact score as diffusers' :math:`\varepsilon`-network for a scheduler's family, counting calls."""

    def __init__(self, sde, score: Callable, scheduler, train_steps: int = TRAIN_STEPS):
        self.sde, self.score, self.family, self.nfe = sde, score, scheduler.sdekit_family, 0
        _, acp = table(sde, train_steps)
        self.log_levels = 0.5 * torch.log((1 - acp) / acp)           # log sigma~ at k = 0..K-1

    def level(self, tau: torch.Tensor) -> torch.Tensor:
        r"""The scheduler's :math:`\tilde\sigma` at its time value ``tau`` (float64)."""
        tau = tau.to(torch.float64)
        if self.family == "edm":
            return torch.exp(4 * tau)                                 # c_noise = log(sigma) / 4
        k = tau.clamp(0, len(self.log_levels) - 1)
        lo = k.floor().long().clamp(max=len(self.log_levels) - 2)
        w = k - lo
        return torch.exp((1 - w) * self.log_levels[lo] + w * self.log_levels[lo + 1])

    def __call__(self, model_input: torch.Tensor, tau) -> torch.Tensor:
        self.nfe += 1
        s = self.level(torch.as_tensor(tau).reshape(-1)[:1])
        t = self.sde.t_of_log_snr(-torch.log(s)).to(torch.float64)
        x_ve = model_input.to(torch.float64) * torch.sqrt(s * s + 1)     # undo scale_model_input (sigma_data = 1)
        eps = -self.sde.sigma(t) * self.score(x_ve * self.sde.alpha(t), t.expand(x_ve.shape[0]))
        if self.family == "edm":                   # EDM's F: x0^ = c_skip x~ + c_out F, x0^ = x~ - sigma~ eps
            c_skip, c_out = 1 / (s * s + 1), s / torch.sqrt(s * s + 1)
            eps = (x_ve - s * eps - c_skip * x_ve) / c_out
        return eps.to(model_input.dtype)


def run(scheduler, sde, score: Callable, x_start: torch.Tensor, steps: int, generator=None):
    r"""diffusers' pipeline loop: ``(x, nfe, t_end)``.

    ``set_timesteps(steps)`` is called first; ``x_start`` is the SDE's state at the scheduler's first level
    (``sdekit_grid(scheduler, sde)[0]``: ``sde.T`` for the linspace and trailing spacings, lower for the leading
    one).  ``x`` is the SDE's state at ``t_end`` (the scheduler's last level as an sdekit time), or
    :math:`\hat x_0` with ``t_end = 0.0`` where the scheduler ends at level zero.
    """
    model = EpsModel(sde, score, scheduler)
    scheduler.set_timesteps(steps)
    t0 = sdekit_grid(scheduler, sde)[:1]
    x = x_start.to(torch.float64) / sde.alpha(t0)                      # x~ = x / alpha at the first level
    if model.family == "vp":
        x = x / torch.sqrt(1 + (sde.sigma(t0) / sde.alpha(t0)) ** 2)   # x^{vp}
    x = x.to(x_start.dtype)
    extra = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    for tau in scheduler.timesteps:
        eps = model(scheduler.scale_model_input(x, tau), tau)
        x = scheduler.step(eps, tau, x, **extra).prev_sample
    t_end, level = end_level(scheduler, sde)
    if t_end == 0.0:
        return x, model.nfe, 0.0
    t = torch.tensor([t_end], dtype=torch.float64)
    scale = sde.alpha(t) * (math.sqrt(1 + level * level) if model.family == "vp" else 1.0)
    return (x.to(torch.float64) * scale).to(x_start.dtype), model.nfe, t_end


def end_level(scheduler, sde) -> Tuple[float, float]:
    """The scheduler's last noise level ``(t, sigma~)``, ``(0.0, 0.0)`` where it ends at level zero."""
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None and len(sigmas) > 0:
        last = float(sigmas[-1])
    else:                                  # DDIM, PNDM: the level after the last timestep, from the float64 table
        k = int(scheduler.timesteps[-1]) - (scheduler.config.num_train_timesteps // scheduler.num_inference_steps)
        final = float(getattr(scheduler, "final_alpha_cumprod", 0.0)) if k < 0 else 0.0
        model = EpsModel(sde, lambda x, t: x, scheduler)
        last = 0.0 if final == 1.0 else float(model.level(torch.tensor([float(max(k, 0))])))
    if last == 0.0:
        return 0.0, 0.0
    t = float(sde.t_of_log_snr(torch.tensor([-math.log(last)], dtype=torch.float64)))
    return t, last


def sdekit_grid(scheduler, sde) -> torch.Tensor:
    r"""The scheduler's noise levels as a float64 sdekit grid from ``sde.T`` (after ``set_timesteps``).

    Levels :math:`\tilde\sigma_i` (the scheduler's ``sigmas`` where it steps through them, else its timesteps' table
    levels) map to :math:`t_i = t(\lambda = -\log\tilde\sigma_i)`; the first point is at most ``sde.T``, and the
    last is the scheduler's final level (``end_level``).  A level the scheduler repeats (Karras spacings end at
    the table's smallest level, and ``final_sigmas_type="sigma_min"`` appends it again: a step of length zero that
    costs diffusers one evaluation) appears once.
    """
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None and len(sigmas) == len(scheduler.timesteps) + 1:
        levels = torch.as_tensor(np.asarray(sigmas[:-1], dtype=np.float64))      # the levels it steps through
    else:
        taus = torch.as_tensor(np.asarray(scheduler.timesteps, dtype=np.float64))
        levels = EpsModel(sde, lambda x, t: x, scheduler).level(taus)
    ts = sde.t_of_log_snr(-torch.log(levels)).to(torch.float64)
    t_end, _ = end_level(scheduler, sde)
    grid = torch.cat([ts, torch.tensor([t_end if t_end > 0 else float(sde.eps)], dtype=torch.float64)])
    grid[0] = min(float(grid[0]), float(sde.T))
    keep = torch.cat([torch.tensor([True]), grid[1:] < grid[:-1]])   # Karras levels end where sigma_min repeats them
    return grid[keep]
