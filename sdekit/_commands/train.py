"""``sdekit train``: train a small score network by denoising score matching and save it as safetensors.

``--data digits`` trains a :class:`sdekit.studies.ScoreUNet` on scikit-learn's digits (the training split,
dequantised; :mod:`sdekit.studies._digits`) and reports the held-out likelihood bound on the test split in nats
and in bits per pixel of the 17-level images; other data train a :class:`sdekit.studies.ScoreMLP`.
"""

import functools
import math
import os

from . import COMMANDS
from ._common import UsageError, _device, _say, _threads

PREDICTIONS = ("eps", "x0", "v", "score", "edm")
#: Steps between the loss logs (and the digits U-Net's held-out bounds, at the first log after each --eval-every).
LOG_EVERY = 50


def add_parser(sub):
    p = sub.add_parser("train", help=COMMANDS["train"],
                       description="Train a score network by denoising score matching (sdekit.losses) on the "
                                   "embedded 2-D mixture, scikit-learn's digits (a U-Net) or your points, and save "
                                   "it as safetensors with its SDE, parameterisation and architecture; sdekit study "
                                   "--model FILE studies it.")
    p.add_argument("--data", metavar="FILE|digits",
                   help="digits (scikit-learn's 8x8 digits, a U-Net), or points (n, d) in a .npz (array 'x') or .pt "
                        "file (default: exact samples of the embedded 2-D mixture)")
    p.add_argument("--sde", default="vp", help="vp (default), subvp, ve")
    p.add_argument("--prediction", default="eps", help=f"what the network predicts: {', '.join(PREDICTIONS)} "
                                                        "(default eps)")
    p.add_argument("--weighting", default="variance", help="variance (default, sigma^2: DDPM's loss for eps), "
                                                           "likelihood (g^2), karras (EDM's) or soft_min_snr")
    p.add_argument("--t-sampler", dest="t_sampler", default=None,
                   help="uniform or importance (default: importance for --weighting likelihood, else uniform)")
    p.add_argument("--steps", type=int, default=None,
                   help="optimiser steps (default 4000 for an MLP, about a minute on one CPU thread; 2000 for the "
                        "digits U-Net, about 12 minutes)")
    p.add_argument("--batch", type=int, default=None, help="default 512 (MLP), 128 (digits)")
    p.add_argument("--lr", type=float, default=None,
                   help="Adam's learning rate, decayed to 0 (default 2e-3 for an MLP, 1e-3 for the digits)")
    p.add_argument("--ema", type=float, default=None,
                   help="decay of the weights' moving average (default 0.999 for an MLP, 0.995 for the digits)")
    p.add_argument("--grad-clip", dest="grad_clip", type=float, default=None,
                   help="largest gradient norm (default none for an MLP, 1 for the digits)")
    p.add_argument("--width", type=int, default=128, help="MLP width (default 128)")
    p.add_argument("--depth", type=int, default=3, help="MLP hidden layers (default 3)")
    p.add_argument("--channels", type=int, default=32, help="U-Net width at full resolution (default 32)")
    p.add_argument("--eval-every", dest="eval_every", type=int, default=500,
                   help="steps between held-out bounds of the digits U-Net (default 500; 0: only at the end)")
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
    digits = args.data == "digits"
    for name, mlp, image in (("steps", 4000, 2000), ("batch", 512, 128), ("lr", 2e-3, 1e-3), ("ema", 0.999, 0.995),
                             ("grad_clip", None, 1.0)):
        if getattr(args, name) is None:
            setattr(args, name, image if digits else mlp)
    for name in ("steps", "batch", "width", "depth", "channels"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be at least 1")
    if args.eval_every < 0:
        raise UsageError(f"--eval-every must be 0 or more, got {args.eval_every}")
    if not 0 <= args.ema < 1:
        raise UsageError(f"--ema must be in [0, 1), got {args.ema}")
    if args.grad_clip is not None and not 0 < args.grad_clip < float("inf"):
        raise UsageError(f"--grad-clip must be a positive number, got {args.grad_clip}")
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
        network, on_log, space = None, None, None
        what = f"a score MLP ({args.depth} x {args.width}, predicts {args.prediction})"
        if args.data == "digits":
            from sdekit.studies import ScoreUNet
            from sdekit.studies._digits import (BINS, BPD_OFFSET, DATA_SPACE, EVENT_SHAPE, dequantise, digits,
                                                digits_sampler)
            d = digits()
            sample = digits_sampler(d.train_levels)
            test = dequantise(d.test_levels, torch.Generator().manual_seed(derived_seed(args.seed, 1)))
            data_name, shape, exact, space = "digits", EVENT_SHAPE, None, DATA_SPACE
            network = functools.partial(ScoreUNet, EVENT_SHAPE, channels=args.channels)
            if args.eval_every and not args.quiet:      # the bounds are printed, not kept: none under --quiet

                def on_log(step, loss, model, bar):     # bar: the progress bar, there unless --quiet
                    # at the first log at or after each multiple of --eval-every (logs come every LOG_EVERY steps)
                    if step // args.eval_every > max(0, step - LOG_EVERY) // args.eval_every and step < args.steps:
                        b = evaluate_bound(model, sde, test, draws=2, seed=args.seed)
                        bar.write(f"step {step}: loss {loss:.4g}, held-out bound {b.mean:.2f} ± "
                                  f"{1.96 * b.mean_se:.2g} nats = {b.bits_per_dim + BPD_OFFSET:.4f} bits/pixel")
            what = f"a score U-Net ({args.channels} channels, predicts {args.prediction})"
        elif args.data:
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
        _say(args.quiet, f"training {what} on {data_name} under {sde!r}: {args.steps} steps of {args.batch}, "
                         f"lr {args.lr:g}, EMA {args.ema:g}, weighting "
                         f"{args.weighting}, t {args.t_sampler}; threads {threads} ({why})")
        result = train_score_model(sample, sde, shape, prediction=args.prediction, weighting=args.weighting,
                                   t_sampler=args.t_sampler, steps=args.steps, batch=args.batch, lr=args.lr,
                                   width=args.width, depth=args.depth, seed=args.seed, progress=not args.quiet,
                                   device=args.device, ema=args.ema, network=network, grad_clip=args.grad_clip,
                                   on_log=on_log, log_every=LOG_EVERY)
        model = result.model
        model.network.cpu()
        bound = evaluate_bound(model, sde, test, seed=args.seed)
        info = dict(data=data_name, event_shape=list(shape), loss_first=result.losses[0],
                    loss_last=result.losses[-1], seconds=round(result.seconds, 2),
                    nll_bound=bound.mean, nll_bound_se=bound.mean_se, **result.settings)
        line = f"held-out likelihood bound {bound.mean:.4f} ± {1.96 * bound.mean_se:.2g} nats"
        if space is not None:
            bpd = bound.bits_per_dim + BPD_OFFSET
            info.update(data_space=space, data_range=[-1.0, 1.0], bins=BINS, nll_bound_bits_per_dim=bpd,
                        nll_bound_bits_per_dim_se=bound.mean_se / (bound.dim * math.log(2)), held_out="test split",
                        network="ScoreUNet", channels=args.channels, device=args.device)
            line += f" = {bpd:.4f} bits per pixel of the 17-level test images (dequantised; offset 3 bits)"
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
