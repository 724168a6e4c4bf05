r"""DiffusersScheduler against diffusers' own schedulers (a script, never a test).

Accuracy.  A held-out problem with an exact score: a sharp 2-D Gaussian mixture (four modes in [-1, 1]²,
weights 0.4 / 0.3 / 0.2 / 0.1, standard deviations 0.03 to 0.08) under DDPM's linear table
(``DiscreteVPSDE.linear(1000)``, diffusers' ``DDPMScheduler()`` defaults), wrapped as an ε-prediction "UNet":
``eps(x, n) = -sigma(t_n) * score(x, t_n)`` at timestep ``n`` (``t_n = (n + 1)/1000``; a fractional timestep is
taken at its fractional time), called on states of shape ``(batch, 2, 1, 1)`` in float32, as a pipeline would.
Every scheduler runs the same DDPM-like loop (``scale_model_input``, the model, ``step``) from the same
``z ~ N(0, I)`` (times ``init_noise_sigma``), with ``timestep_spacing="trailing"`` for diffusers' schedulers (so
that every loop starts at timestep 999, ``t = 1``), at the NFE budgets 5, 10, 20 and 50; a scheduler taking two
evaluations a step runs the most steps the budget allows (the NFE column says how many it used).  The error is
the RMS (over all entries, 2 000 samples) against the exact probability-flow map from the loop's first state to
its last time: ``t = 1/1000`` for sdekit (its solves end at ``eps``), ``t ≈ 0`` for diffusers' schedulers (their
last step goes to ᾱ = 1; the reference is taken to ``t = 1e-9``).  The exact map is DPM-Solver-3 at 1000 log-SNR
steps on the continuous flow with the exact score, in float64 (its difference from 2000 steps is printed: about
1e-6; torchdiffeq's ``dopri5`` at ``rtol = atol = 1e-10`` is slower by 30x on this table's 1000 kinks of
β(t) and further from converged, 7e-4).

Speed.  The time per step of ``DDPMPipeline`` with ``DiffusersScheduler(method="dpmpp_2m")`` over the same
pipeline with diffusers' ``DPMSolverMultistepScheduler`` (its defaults: DPM-Solver++(2M)), 50 steps, one CPU
thread, interleaved repeats (the best of each), as the process's CPU time (all threads: what other processes on
a shared machine do not inflate) and wall clock, for a near-free network (``0.1 x``: the loop's own cost) and for
a small random ``UNet2DModel``; the last column is sdekit's own ``solve()`` of the same method and network outside
any pipeline (what the scheduler adds is the difference)::

    python benchmarks/diffusers_scheduler.py              # about 5 minutes of one CPU thread
    python benchmarks/diffusers_scheduler.py --quick      # 500 samples, NFE 10 and 20, fewer repeats
    python benchmarks/diffusers_scheduler.py --only speed # or --only accuracy
"""

import argparse
import math
import time
import warnings

import torch

import sdekit
from sdekit.adapters import DiffusersScheduler, DiscreteVPSDE, from_diffusers
from sdekit.adapters._diffusers import final_to_one
from sdekit.validation import GaussianMixture

import diffusers
from diffusers import DDPMPipeline, DDPMScheduler, ModelMixin, UNet2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.unets.unet_2d import UNet2DOutput

N_TRAIN = 1000
REFERENCE_STEPS = 1000
SDEKIT = ["ddim", "dpmpp_2m", "dpmpp_3m", "unipc", "deis", "ipndm", "lms", "edm_heun", "dpm_solver_2"]
DIFFUSERS = [
    ("DDIM", "DDIMScheduler", {}),
    ("DPM-Solver++(2M)", "DPMSolverMultistepScheduler", {}),
    ("DPM-Solver++(3M)", "DPMSolverMultistepScheduler", {"solver_order": 3}),
    ("UniPC (bh2, order 2)", "UniPCMultistepScheduler", {}),
    ("UniPC (order 3)", "UniPCMultistepScheduler", {"solver_order": 3}),
    ("DEIS (order 2)", "DEISMultistepScheduler", {}),
    ("DEIS (order 3)", "DEISMultistepScheduler", {"solver_order": 3}),
    ("PNDM (PLMS)", "PNDMScheduler", {"skip_prk_steps": True, "set_alpha_to_one": True}),
    ("LMS", "LMSDiscreteScheduler", {}),
    ("Euler", "EulerDiscreteScheduler", {}),
    ("Heun", "HeunDiscreteScheduler", {}),
    ("KDPM2", "KDPM2DiscreteScheduler", {}),
    ("DPM-Solver++(2M) Karras", "DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
]


def held_out_mixture(sde):
    def cov(sx, sy, r):
        return [[sx * sx, r * sx * sy], [r * sx * sy, sy * sy]]
    return GaussianMixture([0.4, 0.3, 0.2, 0.1], [[-0.6, -0.4], [0.5, 0.6], [0.6, -0.5], [-0.3, 0.7]],
                           [cov(0.05, 0.03, 0.3), cov(0.03, 0.08, -0.5), cov(0.06, 0.04, 0.0), cov(0.04, 0.04, 0.7)],
                           sde)


class ExactEps:
    """The mixture's exact noise prediction as a diffusers-style model: ``model(x, timestep) -> eps``."""

    def __init__(self, sde, mixture):
        self.sde, self.mixture = sde, mixture

    def __call__(self, x, timestep):
        n = torch.as_tensor(timestep, dtype=torch.float64).reshape(-1)[:1].expand(x.shape[0])
        t = self.sde.time(n)
        flat = x.reshape(x.shape[0], -1).to(torch.float64)
        eps = -self.sde.sigma(t)[:, None] * self.mixture.score(flat, t)
        return eps.to(x.dtype).reshape(x.shape)


def run_loop(scheduler, model, z, steps):
    """The DDPM-like loop; returns (the first VP-frame state, its time, the final state, NFE)."""
    scheduler.set_timesteps(steps)
    x = z * scheduler.init_noise_sigma
    t0 = scheduler.timesteps[0]
    start = scheduler.scale_model_input(x, t0).clone()
    nfe = 0
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = model(scheduler.scale_model_input(x, t), t)
            nfe += 1
            x = scheduler.step(out, t, x).prev_sample
    return start, (float(t0) + 1) / N_TRAIN, x, nfe


def exact_flow(sde, mixture, x, t_start, t_end, steps=REFERENCE_STEPS):
    """The flow map of the exact score from (x, t_start) to t_end: DPM-Solver-3 on a fine log-SNR grid, float64."""
    flat = x.reshape(x.shape[0], -1).to(torch.float64)
    pf = sdekit.probability_flow(sde, mixture.score)
    return pf.solve(flat, method="dpm_solver_3", steps=steps, t_start=t_start, t_end=t_end).x


def reference_check(sde, mixture, z):
    """How far the reference is from converged: 1000 against 2000 steps, to each end time."""
    out = []
    for t_end in (sde.eps, 1e-9):
        a = exact_flow(sde, mixture, z, 1.0, t_end)
        b = exact_flow(sde, mixture, z, 1.0, t_end, steps=2 * REFERENCE_STEPS)
        out.append(f"to t = {t_end:g}: max |difference| {float((a - b).abs().max()):.1e}")
    return "; ".join(out)


def rms(d):
    return float(d.pow(2).mean().sqrt())


def steps_for(nfe, per_step):
    return max(1, nfe // per_step)


def accuracy(budgets, n):
    sde = DiscreteVPSDE.linear(N_TRAIN)
    mixture = held_out_mixture(sde)
    model = ExactEps(sde, mixture)
    config = DDPMScheduler(num_train_timesteps=N_TRAIN, clip_sample=False).config
    z = torch.randn(n, 2, 1, 1, generator=torch.Generator().manual_seed(0))
    print("reference (200 samples): " + reference_check(sde, mixture, z[:200]), flush=True)
    cache = {}

    def error(start, t_start, x, t_end):
        key = (t_start, t_end, start.numpy().tobytes())
        if key not in cache:
            cache[key] = exact_flow(sde, mixture, start, t_start, t_end)
        return rms(x.reshape(x.shape[0], -1).double() - cache[key])

    rows = []
    for name in SDEKIT:
        s = DiffusersScheduler.from_config(config, method=name)
        s.set_timesteps(4)
        per = s.order
        cells = []
        for nfe in budgets:
            start, t0, x, used = run_loop(s, model, z, steps_for(nfe, per))
            cells.append((used, error(start, t0, x, sde.eps)))
        rows.append(("sdekit", name, cells))
    for label, cls, kwargs in DIFFUSERS:
        cells = []
        for nfe in budgets:
            s = getattr(diffusers, cls).from_config(config, timestep_spacing="trailing", **kwargs)
            per = 2 if cls in ("HeunDiscreteScheduler", "KDPM2DiscreteScheduler") else 1
            steps = steps_for(nfe + 1, per) if per == 2 else nfe      # 2 steps - 1 evaluations: the last is Euler
            start, t0, x, used = run_loop(s, model, z, steps)
            end = 1e-9 if final_to_one(s.config) else sde.eps
            cells.append((used, error(start, t0, x, end)))
        rows.append(("diffusers", label, cells))
    return rows


def print_accuracy(rows, budgets):
    print("RMS error against the exact flow map (held-out 2-D mixture, DDPM linear table, float32 loop)")
    head = f"{'library':9}  {'scheduler':26}" + "".join(f"  {'NFE ' + str(b):>16}" for b in budgets)
    print(head)
    print("-" * len(head))
    best = {b: min(c[i][1] for _, _, c in rows if c[i][0] <= b) for i, b in enumerate(budgets)}
    for lib, name, cells in rows:
        out = f"{lib:9}  {name:26}"
        for i, (used, err) in enumerate(cells):
            mark = "*" if err == best[budgets[i]] else " "
            nfe = "" if used == budgets[i] else f"({used})"
            out += f"  {nfe:>5} {err:9.2e}{mark}"
        print(out)
    for i, b in enumerate(budgets):
        mine = min(c[i][1] for lib, _, c in rows if lib == "sdekit")
        theirs = min(c[i][1] for lib, _, c in rows if lib == "diffusers")
        print(f"NFE {b}: best sdekit {mine:.2e}, best diffusers {theirs:.2e}, ratio {theirs / mine:.2f}")


# -- speed --------------------------------------------------------------------------------------------------------
class Cheap(ModelMixin, ConfigMixin):
    """A near-free network for DDPMPipeline: 0.1 x (the loop's own cost is what is left)."""

    @register_to_config
    def __init__(self, sample_size=8, in_channels=2):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.1))

    def forward(self, x, t):
        return UNet2DOutput(sample=self.scale * x)


def small_unet(channels, size):
    torch.manual_seed(0)
    return UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels, layers_per_block=1,
                       block_out_channels=(16, 32), norm_num_groups=8, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D")).eval()


def per_step(fn, steps):
    """``(CPU seconds, wall seconds)`` per step of one call of ``fn``: the process's CPU time (every thread), which
    other processes on a shared machine do not inflate, and the wall clock, which they do."""
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return (time.process_time() - cpu) / steps, (time.perf_counter() - wall) / steps


def speed(repeats, steps=50):
    config = DDPMScheduler(num_train_timesteps=N_TRAIN, clip_sample=False).config
    cases = [("0.1 x, (1, 3, 32, 32)", Cheap(32, 3), 1), ("0.1 x, (4, 4, 64, 64)", Cheap(64, 4), 4),
             ("UNet2DModel 16/32, (4, 3, 32, 32)", small_unet(3, 32), 4)]
    print(f"\nTime per step inside DDPMPipeline ({steps} steps, one CPU thread, best of {repeats} interleaved): "
          f"CPU time of the process (wall clock in brackets)")
    print(f"{'network, batch shape':36} {'DPMSolverMultistep':>24} {'DiffusersScheduler':>24} {'ratio':>6} "
          f"{'sdekit solve() alone':>24}")
    for label, net, batch in cases:
        runs = {}
        for key, sched in (("diffusers", diffusers.DPMSolverMultistepScheduler.from_config(config)),
                           ("sdekit", DiffusersScheduler.from_config(config, method="dpmpp_2m"))):
            pipe = DDPMPipeline(unet=net, scheduler=sched)
            pipe.set_progress_bar_config(disable=True)
            runs[key] = (lambda p: lambda: p(batch_size=batch, num_inference_steps=steps, output_type="pt",
                                             generator=torch.Generator().manual_seed(0)))(pipe)
        adapter = from_diffusers(net, config)
        flow = sdekit.probability_flow(adapter.sde, adapter)
        x = torch.randn(batch, net.config.in_channels, net.config.sample_size, net.config.sample_size)
        runs["solve"] = lambda: flow.solve(x, method="dpmpp_2m", steps=steps)
        best = {k: (math.inf, math.inf) for k in runs}
        with torch.no_grad():
            for _ in range(repeats + 1):           # the first round warms up (and plans sdekit's timesteps)
                for key, fn in runs.items():
                    cpu, wall = per_step(fn, steps)
                    best[key] = (min(best[key][0], cpu), min(best[key][1], wall))
        cell = lambda k: f"{best[k][0] * 1e6:8.0f} us ({best[k][1] * 1e6:6.0f})"     # noqa: E731
        ratio = best['sdekit'][0] / best['diffusers'][0]
        print(f"{label:36} {cell('diffusers'):>24} {cell('sdekit'):>24} {ratio:6.2f} "
              f"{cell('solve'):>24}", flush=True)
    first = DiffusersScheduler.from_config(config, method="dpmpp_2m")
    start = time.perf_counter()
    first.set_timesteps(steps)
    planned = time.perf_counter() - start
    start = time.perf_counter()
    first.set_timesteps(steps)
    again = time.perf_counter() - start
    print(f"set_timesteps({steps}): {planned * 1e3:.1f} ms the first time (the dry run), {again * 1e6:.0f} us after")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="500 samples, NFE 10 and 20, 3 repeats")
    parser.add_argument("--only", choices=("accuracy", "speed"), help="run one of the two parts")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=UserWarning)
    budgets = (10, 20) if args.quick else (5, 10, 20, 50)
    n = 500 if args.quick else 2000
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, sdekit {sdekit.__version__}")
    if args.only != "speed":
        print_accuracy(accuracy(budgets, n), budgets)
    if args.only != "accuracy":
        speed(3 if args.quick else 7)


if __name__ == "__main__":
    main()
