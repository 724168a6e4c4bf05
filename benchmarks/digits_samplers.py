r"""k-diffusion's and diffusers' samplers beside sdekit's on the shipped digits model (a script, never a test).

The network of ``sdekit.studies.load_model("digits")`` (a U-Net trained on scikit-learn's 8×8 digits,
docs/trained_models.md), run in float64, is one score for every library: sdekit's samplers take it as
``probability_flow(sde, score)``, k-diffusion's as the VE-frame denoiser of ``samplers.Denoiser``, diffusers'
schedulers as the ε-network of ``diffusers_peers.EpsModel`` (the same noise level read back from each scheduler's
time).  At 5, 10 and 20 NFE every sampler runs from the **same** x_T (``--states`` prior draws, seed 2) and is
measured by the RMS error (over all pixels, in the model space [-1, 1]) against **one** fine reference: torchdiffeq's
``dopri5`` at ``rtol = atol = 1e-9`` from the same x_T to the sampler's own end time (diffusers' schedulers that
end elsewhere are compared with the flow at their end).

- sdekit stock: its fixed-step ODE samplers (``samplers.SD_ODE``) on the uniform, log-SNR and Karras grids, the
  best grid shown;
- sdekit optimized: ``sdekit.optimize_schedule`` (calibrated on ``--calibration`` other prior draws, seed 1) for
  dpmpp_2m, unipc and dpmpp_3m (``--no-optimized`` to skip; absent from an sdekit without it);
- k-diffusion: its ODE samplers (``samplers.KD_ODE``) on the same three grids;
- diffusers: the ODE schedulers of ``diffusers_peers.PEERS`` with each spacing.

    python benchmarks/digits_samplers.py                 # 128 states, every sampler (long on a busy CPU)
    python benchmarks/digits_samplers.py --quick         # 32 states, 5 and 10 NFE, no optimized grids

The rows reuse ``benchmarks/optimized_schedules.py``'s row functions, so the two benchmarks measure alike.
"""

import argparse
import datetime
import os
import platform
import sys
import time
import warnings

import torch

import sdekit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from samplers import load_k_diffusion  # noqa: E402
import optimized_schedules as opt  # noqa: E402

CAL_SEED, TEST_SEED = 1, 2


class DigitsBench:
    """The shipped digits model as the benchmarks' problem: its SDE, a float64 score, prior states, on flattened
    images ``(n, 64)`` (the peers' wrappers broadcast per-sample coefficients as ``(n, 1)``)."""

    is_mixture = True          # optimized_schedules.Exact: the reference is a dopri5 solve, not a closed form

    def __init__(self):
        from sdekit.studies import load_model
        adapter, meta = load_model("digits", dtype=torch.float64)
        self.sde, self.adapter = meta["sde"], adapter
        self.name = "digits U-Net (shipped), VP"
        self.dim = 64

    def score(self, x, t):
        with torch.no_grad():
            return self.adapter(x.reshape(-1, 1, 8, 8), t).reshape(x.shape)

    def x_T(self, n, seed):
        return self.sde.prior_sampling((n, 64), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="32 states, 5 and 10 NFE, no optimized grids")
    p.add_argument("--states", type=int, default=None, help="test states (default 128; 32 with --quick)")
    p.add_argument("--calibration", type=int, default=64, help="calibration states of the optimized grids")
    p.add_argument("--no-optimized", dest="optimized", action="store_false")
    p.add_argument("--reference-tol", type=float, default=1e-9)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Should have t", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    budgets = (5, 10) if args.quick else (5, 10, 20)
    n = args.states or (32 if args.quick else 128)
    ks, kd_note = load_k_diffusion()
    problem = DigitsBench()
    print(f"# Samplers on the shipped digits model: sdekit {sdekit.__version__}, k-diffusion "
          f"{kd_note if ks else '(absent)'}, diffusers "
          f"{__import__('diffusers').__version__ if opt.diffusers_peers else '(absent)'}\n")
    print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; torch {torch.__version__}; "
          f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s); "
          f"command: python {' '.join(sys.argv)}")
    print(f"\nRMS error against dopri5 at {args.reference_tol:g} from the same {n} prior states (seed {TEST_SEED}); "
          f"the network in float64.")
    x_T = problem.x_T(n, TEST_SEED)
    exact = opt.Exact(problem, x_T, tol=args.reference_tol)
    started = time.perf_counter()
    exact(problem.sde.eps)
    print(f"(reference: {time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    rows, costs = [], []
    has_optimizer = hasattr(sdekit, "optimize_schedule")
    if args.optimized and not args.quick and has_optimizer:
        x_cal = problem.x_T(args.calibration, CAL_SEED)
        methods = ("dpmpp_2m", "unipc", "dpmpp_3m")
        more, costs = opt.optimized_rows(problem, x_cal, x_T, exact, budgets, methods,
                                         lambda m: print(m, file=sys.stderr, flush=True))
        rows += more
    elif args.optimized and not has_optimizer:
        print("\nNote: this sdekit has no optimize_schedule; optimized rows skipped.")
    rows += opt.sdekit_rows(problem, x_T, exact, budgets)
    if ks is not None:
        rows += opt.kd_rows(ks, problem, x_T, exact, budgets)
    if opt.diffusers_peers is not None:
        import diffusers
        diffusers.utils.logging.set_verbosity_error()
        rows += opt.diffusers_rows(problem, x_T, exact, budgets)
    opt.report(problem, rows, budgets, costs)
    print(f"\n({time.perf_counter() - started:.0f} s in all)")


if __name__ == "__main__":
    main()
