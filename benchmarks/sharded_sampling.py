"""What sharded, keyed sampling costs against one plain batch (a script, never a test).

The peer is what a sampling script does without sharding: the initial states from ``torch.randn`` scaled by
the prior's std, one ``solve`` of the whole batch (SDE methods seeded with ``seed=``), the samples kept in
memory.  sdekit's sharded path (:mod:`sdekit._sharding`, what ``sdekit sample`` runs on each rank) draws
each sample's initial state and Brownian path from ``(seed, index)``, solves shard by shard in batches, writes
each shard atomically (fsynced) and gathers them into one file.  Both on the 2-D mixture under VP with its
exact score (the solver's and the noise's own cost shows) and on 3x32x32 Gaussian "images" with their exact
score.

Prints the wall time (minimum of ``--repeats`` interleaved rounds after a warm-up) and the ratio sharded /
plain; whether the sharded samples are the same bits for two batch sizes is printed beside.

    python benchmarks/sharded_sampling.py --threads 1
    python benchmarks/sharded_sampling.py --device cuda
    python benchmarks/sharded_sampling.py --quick
"""

import argparse
import os
import platform
import tempfile
import time

import torch

from sdekit import StudyProblem, VPSDE
from sdekit._sharding import ShardStore, keyed_initial, sample_shard, save_samples, shards
from sdekit._study_engine import MethodSpec
from sdekit.studies import default_problem


def image_problem():
    """N(0, diag(v)) data in 3x32x32 under VP: p_t = N(0, alpha^2 v + sigma^2), score -x / that."""
    sde = VPSDE()
    v = torch.linspace(0.1, 2.0, 3 * 32 * 32, dtype=torch.float64).view(3, 32, 32)

    def score(x, t):
        a = sde.alpha(t).to(x.dtype).view(-1, 1, 1, 1)
        s = sde.sigma(t).to(x.dtype).view(-1, 1, 1, 1)
        return -x / (a * a * v.to(x) + s * s)
    return StudyProblem(sde, score, name="gaussian-3x32x32", event_shape=(3, 32, 32))


def plain(problem, spec, n, steps, dtype, device):
    x0 = problem.sde.prior_std * torch.randn((n,) + problem.event_shape, dtype=dtype, device=device,
                                             generator=torch.Generator(device).manual_seed(0))
    process = problem.sde_process() if spec.process == "sde" else problem.ode_process()
    noise = dict(seed=0) if spec.process == "sde" else {}
    with torch.no_grad():
        return process.solve(x0, method=spec.method, steps=steps, t_start=problem.t_start, t_end=problem.t_end,
                             **noise).x.cpu()


def sharded(problem, spec, n, steps, dtype, device, shard_size, batch, folder):
    store = ShardStore(folder, dict(bench=1))
    store.claim()
    for s in shards(n, shard_size):
        rec = sample_shard(problem, spec, s, 0, dict(steps=steps), batch, dtype, device)
        store.save(s, rec.pop("x"), **rec)
    x = torch.cat([store.load(s)["x"] for s in shards(n, shard_size)])
    save_samples(os.path.join(folder, "samples.pt"), x, dict(n=n))
    store.remove()
    return x


def timed(fn, repeats):
    fn()                                            # warm-up
    best = float("inf")
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--threads", type=int)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="fewer samples, one repeat")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    repeats = 1 if args.quick else args.repeats
    cases = [("mixture 2-D", default_problem("vp"), 4000 if args.quick else 20000, 1000),
             ("gaussian 3x32x32", image_problem(), 64 if args.quick else 512, 64)]
    methods = ["ode:dpmpp_2m", "sde:euler_ancestral", "sde:torchsde.euler"]
    steps = 20
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, device {args.device}, "
          f"{args.dtype}, threads {torch.get_num_threads()}, {steps} steps, min of {repeats}")
    print(f"{'case':18} {'method':26} {'n':>6} {'shard':>5} {'plain s':>8} {'sharded s':>9} {'ratio':>6} same bits")
    with tempfile.TemporaryDirectory() as tmp:
        for name, problem, n, shard in cases:
            for m in methods:
                spec = MethodSpec(m)
                folder = os.path.join(tmp, "shards")
                t_plain = timed(lambda: plain(problem, spec, n, steps, dtype, args.device), repeats)
                t_shard = timed(lambda: sharded(problem, spec, n, steps, dtype, args.device, shard, shard, folder),
                                repeats)
                a = sharded(problem, spec, n, steps, dtype, args.device, shard, shard, folder)
                b = sharded(problem, spec, n, steps, dtype, args.device, shard, max(1, shard // 3), folder)
                print(f"{name:18} {spec.label:26} {n:6d} {shard:5d} {t_plain:8.3f} {t_shard:9.3f} "
                      f"{t_shard / t_plain:6.2f} {torch.equal(a, b)}")
    mixture, index = default_problem("vp"), torch.arange(10 ** 6, device=args.device)
    t_key = timed(lambda: keyed_initial(mixture, 0, index, dtype=dtype, device=args.device), repeats)
    t_randn = timed(lambda: torch.randn((10 ** 6, 2), dtype=dtype, device=args.device), repeats)
    print(f"initial noise for 10^6 x 2: keyed {t_key:.4f} s, torch.randn {t_randn:.4f} s, "
          f"ratio {t_key / t_randn:.1f}")


if __name__ == "__main__":
    main()
