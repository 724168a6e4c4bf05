"""``sdekit train``: train a small score network by denoising score matching and save it as safetensors."""

import os

from ._common import UsageError, _device, _say, _threads

PREDICTIONS = ("eps", "x0", "v", "score", "edm")


def add_parser(sub):
    p = sub.add_parser("train", help="train a small score MLP (the 2-D mixture, or your .npz/.pt points)",
                       description="Train a score MLP by denoising score matching (sdekit.losses) on the embedded "
                                   "2-D mixture or your points, and save it as safetensors with its SDE, "
                                   "parameterisation and architecture; sdekit study --model FILE studies it.")
    p.add_argument("--data", metavar="FILE", help="points (n, d) in a .npz (array 'x') or .pt file "
                                                   "(default: exact samples of the embedded 2-D mixture)")
    p.add_argument("--sde", default="vp", help="vp (default), subvp, ve")
    p.add_argument("--prediction", default="eps", help=f"what the network predicts: {', '.join(PREDICTIONS)} "
                                                        "(default eps)")
    p.add_argument("--weighting", default="variance", help="variance (default, sigma^2: DDPM's loss for eps), "
                                                           "likelihood (g^2), karras (EDM's) or soft_min_snr")
    p.add_argument("--t-sampler", dest="t_sampler", default=None,
                   help="uniform or importance (default: importance for --weighting likelihood, else uniform)")
    p.add_argument("--steps", type=int, default=4000,
                   help="optimiser steps (default 4000, about a minute on one CPU thread)")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--lr", type=float, default=2e-3, help="Adam's learning rate, decayed to 0 (default 2e-3)")
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--seed", type=int, default=0, help="0 .. 2**64 - 1 (default 0)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default 1 on the CPU)")
    p.add_argument("--out", default="model.safetensors", help="the model file (default model.safetensors)")
    p.add_argument("--quiet", "-q", action="store_true")
    p.set_defaults(run=run)


def _check(args):
    from sdekit.studies import SDES
    if args.sde not in SDES:
        raise UsageError(f"unknown --sde {args.sde!r}; choose from {', '.join(SDES)}")
    if args.prediction not in PREDICTIONS:
        raise UsageError(f"unknown --prediction {args.prediction!r}; choose from {', '.join(PREDICTIONS)}")
    from sdekit.losses import T_SAMPLERS, WEIGHTINGS
    if args.weighting not in WEIGHTINGS:
        raise UsageError(f"--weighting must be one of {', '.join(WEIGHTINGS)}, got {args.weighting!r}")
    if args.t_sampler is None:
        args.t_sampler = "importance" if args.weighting == "likelihood" else "uniform"
    if args.t_sampler not in T_SAMPLERS:
        raise UsageError(f"--t-sampler must be uniform or importance, got {args.t_sampler!r}")
    for name in ("steps", "batch", "width", "depth"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be at least 1")
    if not 0 <= args.seed < 2 ** 64:
        raise UsageError(f"--seed must be an integer in 0 .. 2**64 - 1 = {2 ** 64 - 1} (a 64-bit generator seed), "
                         f"got {args.seed}")
    if not 0 < args.lr < float("inf"):
        raise UsageError(f"--lr must be a positive finite number, got {args.lr}")
    if not args.out.endswith(".safetensors"):
        raise UsageError(f"--out must end in .safetensors, got {args.out!r}")
    _device(args.device)


def run(args) -> int:
    import torch

    from sdekit.studies import SDES, MixtureProblem
    from sdekit.studies._trained import (derived_seed, evaluate_bound, load_model, load_points, save_model,
                                         train_score_model)
    from sdekit.losses import score_matching_loss
    _check(args)
    sde = SDES[args.sde]()
    threads, why = _threads(args.threads if args.threads is not None else 1, 0, args.device)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        if args.data:
            points = load_points(args.data, torch.float32)     # the network trains in float32
            perm = torch.randperm(points.shape[0], generator=torch.Generator().manual_seed(args.seed))
            held = max(1, points.shape[0] // 10)
            test, train = points[perm[:held]], points[perm[held:]]
            if train.shape[0] < 1:
                raise UsageError(f"{args.data} has {points.shape[0]} points; give at least 2")

            def sample(n, gen):
                return train[torch.randint(train.shape[0], (n,), generator=gen, device=gen.device).cpu()]
            data_name, shape, exact = os.path.basename(args.data), tuple(train.shape[1:]), None
        else:
            mixture = MixtureProblem(sde).mixture

            def sample(n, gen):
                return mixture.sample(n, t=0.0, generator=gen, device=gen.device)
            data_name, shape, exact = "mixture-2d", (2,), mixture
            test = mixture.sample(4000, t=0.0, generator=torch.Generator().manual_seed(derived_seed(args.seed, 1)))
        _say(args.quiet, f"training a score MLP ({args.depth} x {args.width}, predicts {args.prediction}) on "
                         f"{data_name} under {sde!r}: {args.steps} steps of {args.batch}, weighting "
                         f"{args.weighting}, t {args.t_sampler}; threads {threads} ({why})")
        result = train_score_model(sample, sde, shape, prediction=args.prediction, weighting=args.weighting,
                                   t_sampler=args.t_sampler, steps=args.steps, batch=args.batch, lr=args.lr,
                                   width=args.width, depth=args.depth, seed=args.seed, progress=not args.quiet,
                                   device=args.device)
        model = result.model
        model.network.cpu()
        bound = evaluate_bound(model, sde, test, seed=args.seed)
        info = dict(data=data_name, event_shape=list(shape), loss_first=result.losses[0],
                    loss_last=result.losses[-1], seconds=round(result.seconds, 2),
                    nll_bound=bound.mean, nll_bound_se=bound.mean_se, **result.settings)
        line = f"held-out likelihood bound {bound.mean:.4f} ± {1.96 * bound.mean_se:.2g} nats"
        if exact is not None:
            xe = exact.sample(test.shape[0], t=sde.eps,
                              generator=torch.Generator().manual_seed(derived_seed(args.seed, 2)))
            ent = -exact.log_prob(xe, sde.eps)
            h, h_se = float(ent.mean()), float(ent.std()) / ent.numel() ** 0.5
            floor = score_matching_loss(sde, exact.score, test, weighting=args.weighting, t_sampler=args.t_sampler,
                                        reduce="none",
                                        generator=torch.Generator().manual_seed(derived_seed(args.seed, 3)))
            f, f_se = float(floor.mean()), float(floor.std()) / floor.numel() ** 0.5
            info.update(entropy=h, entropy_se=h_se, loss_floor=f, loss_floor_se=f_se)
            line += (f" (the data's entropy H(p_eps) is {h:.4f} ± {1.96 * h_se:.2g}); the exact score's loss is "
                     f"{f:.4g} ± {1.96 * f_se:.2g}")
        save_model(args.out, model, **info)
        load_model(args.out)                    # the file reads back
    finally:
        torch.set_num_threads(before)
    _say(args.quiet, f"loss {result.losses[0]:.4g} -> {result.losses[-1]:.4g} in {result.seconds:.1f} s; {line}")
    _say(args.quiet, f"wrote {args.out}; study it with: sdekit study --model {args.out}")
    return 0
