r"""A small score network trained with :func:`sdekit.losses.score_matching_loss`, saved, loaded, and studied.

- :class:`ScoreMLP`: an MLP on the flattened state and sinusoidal features of the time; images take
  :class:`sdekit.studies.ScoreUNet` (``network=``).
- :func:`train_score_model`: Adam with a cosine learning-rate decay and an exponential moving average of the
  weights (the EMA is what is saved, as in DDPM, score_sde and diffusers' training examples).
- :func:`save_model` / :func:`load_model`: safetensors, with the SDE, the parameterisation, the time
  convention, the network's class and architecture and the training settings in the metadata; loading builds
  the :class:`sdekit.adapters.Adapter` back through :func:`sdekit.adapters.load_checkpoint` (no pickle).
  :func:`load_model` also takes the name of a model shipped with sdekit (:data:`BUILTIN_MODELS`: ``"digits"``).
- :func:`trained_problem`: a :class:`sdekit.StudyProblem` for ``sdekit study --model FILE``: the trained
  network on the default mixture, judged against exact mixture samples (or, for a model of other data, a
  problem whose reference is a fine solve).
"""

import copy
import json
import math
import numbers
import os
import time
from typing import Callable, Optional

import torch

from sdekit import InvalidParameterError, ShapeError, StudyProblem, SubVPSDE, VESDE, VPSDE
from sdekit.adapters import Adapter, load_checkpoint
from sdekit.adapters._loading import corrupt_checkpoint
from sdekit.losses import nll_bound, score_matching_loss

from ._unet import ScoreUNet

__all__ = ["ScoreMLP", "TrainResult", "train_score_model", "save_model", "load_model", "trained_problem",
           "MODEL_FORMAT", "sde_spec", "sde_from_spec", "load_points", "check_points", "check_seed",
           "derived_seed", "NETWORKS", "BUILTIN_MODELS", "model_path"]

#: The ``format`` entry of a saved model's metadata.
MODEL_FORMAT = "sdekit.score_mlp/1"
_SDE_CLASSES = {"VPSDE": VPSDE, "SubVPSDE": SubVPSDE, "VESDE": VESDE}
_SDE_FIELDS = {"VPSDE": ("beta_min", "beta_max", "T", "eps"), "SubVPSDE": ("beta_min", "beta_max", "T", "eps"),
               "VESDE": ("sigma_min", "sigma_max", "T", "eps", "marginal")}
#: The models shipped inside the package (``studies/models/``), by the name ``load_model`` and ``--model`` take.
BUILTIN_MODELS = {"digits": "digits.safetensors"}


class ScoreMLP(torch.nn.Module):
    r"""An MLP :math:`F(x, \tau)` for states of any event shape (flattened to :math:`d` numbers).

    The time enters as :math:`[\tau, \sin(\omega_k\tau), \cos(\omega_k\tau)]` with ``features`` frequencies
    :math:`\omega_k` spaced geometrically over :math:`[1, 64]` (the sinusoidal embedding of DDPM and score_sde,
    for a time in :math:`[0, 1]`), concatenated with :math:`x`, then ``depth`` hidden layers of ``width``
    SiLU units and a linear output of :math:`d` numbers, reshaped like ``x``.  The network predicts whatever
    its :class:`~sdekit.adapters.Adapter` says (``eps`` by default).
    """

    def __init__(self, event_shape=(2,), width: int = 128, depth: int = 3, features: int = 16):
        super().__init__()
        self.event_shape = tuple(int(n) for n in event_shape)
        self.width, self.depth, self.features = int(width), int(depth), int(features)
        if min(self.event_shape + (self.width, self.depth, self.features)) < 1:
            raise InvalidParameterError(f"ScoreMLP needs positive sizes, got event_shape={self.event_shape}, "
                                        f"width={width}, depth={depth}, features={features}")
        d = math.prod(self.event_shape)
        self.register_buffer("freqs", torch.logspace(0, 6, self.features, base=2.0))
        layers, n_in = [], d + 1 + 2 * self.features
        for _ in range(self.depth):
            layers += [torch.nn.Linear(n_in, self.width), torch.nn.SiLU()]
            n_in = self.width
        layers.append(torch.nn.Linear(n_in, d))
        self.net = torch.nn.Sequential(*layers)

    def architecture(self) -> dict:
        return dict(event_shape=list(self.event_shape), width=self.width, depth=self.depth, features=self.features)

    def forward(self, x, tau):
        n = x.shape[0]
        tau = tau.to(x.dtype).reshape(n, 1)
        angle = tau * self.freqs.to(x.dtype)
        h = torch.cat([x.reshape(n, -1), tau, torch.sin(angle), torch.cos(angle)], dim=1)
        return self.net(h).reshape(x.shape)


#: The network classes a model file may hold, by the name its metadata gives.
NETWORKS = {"ScoreMLP": ScoreMLP, "ScoreUNet": ScoreUNet}


# -- the SDE in the metadata -----------------------------------------------------------------------------------
def sde_spec(sde) -> dict:
    """The JSON-able description of one of sdekit's SDEs (``VPSDE``, ``SubVPSDE``, ``VESDE``) with its parameters."""
    name = type(sde).__name__
    if name not in _SDE_FIELDS:
        raise InvalidParameterError(f"a saved model records its SDE by name; {name} is not one of "
                                    f"{', '.join(_SDE_FIELDS)}")
    return dict(name=name, **{k: getattr(sde, k) for k in _SDE_FIELDS[name]})


def sde_from_spec(spec: dict):
    """The SDE that :func:`sde_spec` described."""
    if not isinstance(spec, dict) or spec.get("name") not in _SDE_CLASSES:
        raise InvalidParameterError(f"the model's metadata names no known SDE ({spec!r:.80}); it must be one of "
                                    f"{', '.join(_SDE_CLASSES)}")
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    return _SDE_CLASSES[spec["name"]](**kwargs)


# -- data -------------------------------------------------------------------------------------------------------
def load_points(path: str, dtype=torch.float32) -> torch.Tensor:
    """Points ``(n, *event_shape)`` from a ``.npz`` (array ``x``, or its only array) or a ``.pt`` file (a tensor,
    or a dict with ``x``), read without pickles; float64, finite, at least 2 points, and within the range of
    ``dtype``, the precision the network trains in (float32 by default)."""
    if not isinstance(path, str) or not path.endswith((".npz", ".pt")):
        raise InvalidParameterError(f"data must be a .npz or .pt file of points (n, d), got {path!r}")
    if not os.path.isfile(path):
        raise InvalidParameterError(f"no data file at {path!r}; check the path")
    if path.endswith(".npz"):
        import numpy as np
        try:
            with np.load(path, allow_pickle=False) as f:
                keys = list(f.keys())
                key = "x" if "x" in keys else (keys[0] if len(keys) == 1 else None)
                if key is None:
                    raise InvalidParameterError(f"{path} holds arrays {keys}; name the points 'x'")
                x = torch.as_tensor(f[key])
        except (ValueError, OSError, EOFError, KeyError) as err:
            raise InvalidParameterError(f"cannot read {path} as .npz ({type(err).__name__}: "
                                        f"{' '.join(str(err).split())[:160]}); it may be truncated or corrupted: "
                                        f"save it again with numpy.savez") from None
    else:
        obj = load_checkpoint(path)
        x = obj.get("x") if isinstance(obj, dict) else obj
        if not isinstance(x, torch.Tensor):
            raise InvalidParameterError(f"{path} holds {type(obj).__name__}; save a tensor of points (n, d) or "
                                        f"a dict with 'x'")
    if not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64)) or x.dim() < 2 or x.shape[0] < 2:
        raise ShapeError(f"data in {path} must be real points of shape (n, d) with n >= 2, got shape "
                         f"{tuple(x.shape)} and dtype {x.dtype}")
    x = x.to(torch.float64)
    check_points(x, f"data in {path}", dtype)
    return x


def check_points(x, what="the data", dtype=torch.float32):
    """Refuse points with inf or NaN, or with values beyond the range of ``dtype`` (they would become inf when the
    network trains in it): a one-line :class:`sdekit.InvalidParameterError` that says which and where."""
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = (~finite).reshape(x.shape[0], -1).any(1)
        first = int(bad.nonzero()[0, 0])
        value = float(x[first].reshape(-1)[~finite[first].reshape(-1)][0])
        raise InvalidParameterError(f"{what} has non-finite entries ({value} in {int(bad.sum())} of {x.shape[0]} "
                                    f"points, the first at index {first}); remove or repair those points")
    limit = torch.finfo(dtype).max if dtype.is_floating_point else math.inf
    top = float(x.abs().max()) if x.numel() else 0.0
    if top > limit:
        raise InvalidParameterError(f"{what} has values up to {top:.3g}, beyond {str(dtype)[6:]}'s range "
                                    f"(±{limit:.3g}) that the network trains in, where they become inf; rescale the "
                                    f"data (standardise each coordinate to about unit scale)")


#: Seeds are 64-bit: torch.Generator.manual_seed takes 0 .. 2**64 - 1.
SEED_LIMIT = 2 ** 64


def check_seed(seed) -> int:
    """``seed`` as an int, refused unless it is an integer in ``0 .. 2**64 - 1`` (a 64-bit generator seed)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < SEED_LIMIT:
        raise InvalidParameterError(f"seed must be an integer in 0 .. 2**64 - 1 = {SEED_LIMIT - 1} (a 64-bit "
                                    f"generator seed), got {seed!r}")
    return int(seed)


def derived_seed(seed: int, k: int) -> int:
    """The ``k``-th seed derived from ``seed`` (``seed + k``), wrapped into the 64-bit range."""
    return (int(seed) + k) % SEED_LIMIT


# -- training ---------------------------------------------------------------------------------------------------
class TrainResult:
    """What :func:`train_score_model` returns: the EMA ``model`` (an Adapter), the loss history (the mean of each
    ``log_every`` steps), the steps and the wall time."""

    def __init__(self, model, losses, steps, seconds, settings):
        self.model, self.losses, self.steps, self.seconds, self.settings = model, losses, steps, seconds, settings

    def __repr__(self):
        return (f"TrainResult(steps={self.steps}, loss {self.losses[0]:.4g} -> {self.losses[-1]:.4g}, "
                f"{self.seconds:.1f} s)")


def train_score_model(sample_data: Callable, sde, event_shape=(2,), *, prediction: str = "eps",
                      weighting="variance", t_sampler: str = "uniform", steps: int = 4000, batch: int = 512,
                      lr: float = 2e-3, ema: float = 0.999, width: int = 128, depth: int = 3, features: int = 16,
                      seed: int = 0, log_every: int = 50, progress: bool = False, dtype=torch.float32,
                      device="cpu", network: Optional[Callable] = None, grad_clip: Optional[float] = None,
                      on_log: Optional[Callable] = None) -> TrainResult:
    r"""Train a :class:`ScoreMLP` (or ``network``) by denoising score matching
    (:func:`sdekit.losses.score_matching_loss`).

    ``sample_data(n, generator)`` returns ``n`` training points (a fresh draw, or a minibatch of a data set).
    Adam at ``lr`` with a cosine decay to 0 over ``steps``; the EMA of the weights (decay ``ema``, warmed up as
    :math:`\min(\mathrm{ema}, (1 + k)/(10 + k))` at step :math:`k`) is the model returned.  Randomness (initial
    weights, data, times, noise) comes from ``seed``.  ``progress`` shows a tqdm bar with the running loss.

    ``network``: a function of no arguments returning the module to train (a :class:`ScoreUNet` for images);
    default a :class:`ScoreMLP` of ``width``, ``depth`` and ``features``.  It is called after the seed is set,
    so its initial weights come from ``seed``.  ``grad_clip``: the largest gradient norm (score_sde clips at 1),
    default none.  ``on_log(step, loss, ema_model, bar)`` is called at each log (``sdekit train`` prints the
    held-out bound there; ``bar`` is the tqdm bar or ``None``).
    """
    for name, v in dict(steps=steps, batch=batch, log_every=log_every).items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InvalidParameterError(f"{name} must be a positive integer, got {v!r}")
    seed = check_seed(seed)
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)) or not (0 <= ema < 1):
        raise InvalidParameterError(f"need lr > 0 and 0 <= ema < 1, got lr={lr!r}, ema={ema!r}")
    if grad_clip is not None and not (isinstance(grad_clip, (int, float)) and grad_clip > 0):
        raise InvalidParameterError(f"grad_clip must be a positive number or None, got {grad_clip!r}")
    torch.manual_seed(seed)
    gen = torch.Generator(device=device).manual_seed(seed)
    net = ScoreMLP(event_shape, width, depth, features) if network is None else network()
    if not isinstance(net, tuple(NETWORKS.values())):
        raise InvalidParameterError(f"network() must return one of {', '.join(NETWORKS)} (they save and load), "
                                    f"got {type(net).__name__}")
    if tuple(net.event_shape) != tuple(event_shape):
        raise ShapeError(f"the network takes event shape {tuple(net.event_shape)}, the data has {tuple(event_shape)}")
    net = net.to(device=device, dtype=dtype)
    avg = copy.deepcopy(net)
    avg.requires_grad_(False)
    avg.eval()
    model = Adapter(net, sde, prediction)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * k / steps)))
    bar = None
    if progress:
        import sys
        from tqdm.auto import tqdm
        bar = tqdm(total=steps, desc="train", unit="step", file=sys.stderr, dynamic_ncols=True)
    losses, running, start = [], 0.0, time.perf_counter()
    try:
        for k in range(steps):
            raw = sample_data(batch, gen)
            if not isinstance(raw, torch.Tensor):
                raise ShapeError(f"the data sampler returned {type(raw).__name__}; it must return a tensor of "
                                 f"points (n, *event_shape)")
            x0 = raw.to(device=device, dtype=dtype)
            if x0.shape[1:] != tuple(event_shape):
                raise ShapeError(f"the data sampler returned points of shape {tuple(x0.shape[1:])}, "
                                 f"the model expects {tuple(event_shape)}")
            try:
                loss = score_matching_loss(sde, model, x0, weighting=weighting, t_sampler=t_sampler, generator=gen)
            except InvalidParameterError:
                if raw.is_floating_point():          # say why the batch is not finite: inf/NaN, or beyond dtype
                    check_points(raw.detach(), "the data sampler's batch", dtype)
                raise
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
            opt.step()
            sched.step()
            with torch.no_grad():
                decay = min(ema, (1 + k) / (10 + k))          # warm-up of the average (score_sde's EMA is fixed)
                for pa, pn in zip(avg.parameters(), net.parameters()):
                    pa.lerp_(pn, 1 - decay)
            running = running + loss.detach().double()        # on the device: no host sync between logs
            if (k + 1) % log_every == 0 or k + 1 == steps:
                n = (k % log_every) + 1
                losses.append(float(running) / n)
                running = 0.0
                if on_log is not None:
                    on_log(k + 1, losses[-1], Adapter(avg, sde, prediction), bar)
                if bar is not None:
                    bar.set_postfix(loss=f"{losses[-1]:.4g}")
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    settings = dict(prediction=prediction, weighting=weighting if isinstance(weighting, str) else "custom",
                    t_sampler=t_sampler, steps=steps, batch=batch, lr=lr, ema=ema, seed=seed)
    if grad_clip is not None:
        settings["grad_clip"] = grad_clip
    return TrainResult(Adapter(avg, sde, prediction), losses, steps, time.perf_counter() - start, settings)


# -- saving and loading -----------------------------------------------------------------------------------------
def save_model(path: str, model: Adapter, **info) -> str:
    """Write ``model`` (an Adapter around a :class:`ScoreMLP` or a :class:`ScoreUNet`) to ``path``
    (``.safetensors``) with its SDE, parameterisation, time convention, network class, architecture (event shape
    included) and ``info`` (JSON-able: the data, its space, the training settings) in the metadata."""
    from safetensors.torch import save_file
    if not str(path).endswith(".safetensors"):
        raise InvalidParameterError(f"the model file must end in .safetensors, got {path!r}")
    net = model.network
    if not isinstance(net, tuple(NETWORKS.values())):
        raise InvalidParameterError(f"save_model saves the adapter of one of {', '.join(NETWORKS)}, got a "
                                    f"{type(net).__name__}")
    meta = dict(format=MODEL_FORMAT, sde=json.dumps(sde_spec(model.sde)), prediction=model.prediction.name,
                time=model.time.name, network=type(net).__name__, architecture=json.dumps(net.architecture()),
                dtype=str(next(net.parameters()).dtype).replace("torch.", ""), info=json.dumps(info, default=str))
    state = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file(state, path, metadata=meta)
    return path


def model_path(name: str) -> str:
    """The file of a model: a built-in name of :data:`BUILTIN_MODELS` (``"digits"``) or a path, returned as given."""
    if isinstance(name, str) and name in BUILTIN_MODELS:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models", BUILTIN_MODELS[name])
        if not os.path.isfile(path):
            raise InvalidParameterError(f"the built-in model {name!r} is missing from this installation ({path}); "
                                        f"reinstall sdekit, or train one with sdekit train --data {name}")
        return path
    return name


def load_model(path: str, dtype=None, device="cpu"):
    """``(adapter, metadata)`` from a file :func:`save_model` wrote, or a built-in model by name (``"digits"``);
    ``metadata['sde']`` is the model's SDE (so ``sdekit.probability_flow(metadata['sde'], adapter)`` is its
    flow), ``metadata['architecture']`` and ``metadata['info']`` are dicts."""
    from safetensors import SafetensorError, safe_open
    path = model_path(path)
    if not str(path).endswith(".safetensors"):
        raise InvalidParameterError(f"{path} is not a .safetensors model written by sdekit train, nor a built-in "
                                    f"model ({', '.join(BUILTIN_MODELS)})")
    state = load_checkpoint(path)           # refuses a missing, truncated or garbled file; reads tensors only
    try:
        with safe_open(path, framework="pt") as f:
            meta = dict(f.metadata() or {})
    except SafetensorError as err:          # pragma: no cover - load_checkpoint has read the same header
        raise corrupt_checkpoint(path, err) from None
    if meta.get("format") != MODEL_FORMAT:
        raise InvalidParameterError(f"{path} is not an sdekit score model (metadata format "
                                    f"{meta.get('format')!r}, expected {MODEL_FORMAT!r}); train one with sdekit train")
    try:
        sde = sde_from_spec(json.loads(meta["sde"]))
        arch = json.loads(meta["architecture"])
        info = json.loads(meta.get("info", "{}"))
        kind = meta.get("network", "ScoreMLP")          # files of before the U-Net name no class: an MLP
        if kind not in NETWORKS:
            raise InvalidParameterError(f"{path} holds a {kind!r}; this sdekit loads {', '.join(NETWORKS)}")
        net = NETWORKS[kind](**arch)
        net.load_state_dict(state)
    except (KeyError, ValueError, TypeError, RuntimeError) as err:
        raise InvalidParameterError(f"{path}: its metadata or tensors do not describe a network of sdekit "
                                    f"({type(err).__name__}: {' '.join(str(err).split())[:200]})") from None
    dtype = getattr(torch, meta.get("dtype", "float32")) if dtype is None else dtype
    net = net.to(device=device, dtype=dtype).eval().requires_grad_(False)
    meta.update(sde=sde, architecture=arch, info=info, network=kind, path=path)
    return Adapter(net, sde, meta["prediction"], meta["time"]), meta


# -- the study problem ------------------------------------------------------------------------------------------
class _ModelScore:
    """The loaded network as the study's score: float64 states in, evaluated in the network's dtype."""

    nfe_per_call = 1

    def __init__(self, adapter):
        self.adapter = adapter
        self.dtype = next(adapter.network.parameters()).dtype

    def __call__(self, x, t):
        with torch.no_grad():
            return self.adapter(x.to(self.dtype), t).to(x.dtype)


def trained_problem(path: str, exact: bool = False):
    """The study problem of the model at ``path``: for a model of the embedded mixture, the default mixture
    problem under the model's SDE with the trained score (``exact=True``: with the exact score, for the
    comparison); for a digits model (``"digits"``, the shipped one), a :class:`sdekit.studies.DigitsProblem`; for a
    model of other data, a :class:`sdekit.StudyProblem` of the trained score alone."""
    from sdekit.studies import MixtureProblem
    adapter, meta = load_model(path)
    name = os.path.basename(path)
    if meta["info"].get("data") == "mixture-2d":
        problem = MixtureProblem(meta["sde"])
        if not exact:
            problem.score = _ModelScore(adapter)
            problem.name = f"{problem.name} trained {name}"
            problem.config = dict(problem.config, model=name, model_info=meta["info"])
        return problem
    if meta["info"].get("data") == "digits" and not exact:
        from ._digits_problem import DigitsProblem
        return DigitsProblem((adapter, meta))
    if exact:
        raise InvalidParameterError(f"{path} was trained on {meta['info'].get('data')!r}, which has no exact "
                                    f"score; only a model of the embedded mixture has one to compare with")
    shape = tuple(meta["architecture"]["event_shape"])
    return StudyProblem(meta["sde"], _ModelScore(adapter), name=f"trained {name}", event_shape=shape,
                        config=dict(model=name, model_info=meta["info"]))


def evaluate_bound(model, sde, x0, draws: int = 8, seed: int = 0):
    """:func:`sdekit.losses.nll_bound` of ``model`` on ``x0`` (float64 data, the model in its dtype), no grad."""
    score = _ModelScore(model)
    with torch.no_grad():
        return nll_bound(sde, score, x0.to(torch.float64), draws=draws,
                         generator=torch.Generator().manual_seed(seed))


def _cell(r, m):
    v = None if r is None else r.get(m)
    if v is None:
        return "-"
    z = r.get(f"{m}_z")
    return f"{v:.3g}" + ("" if z is None else f" (z {z:.1f})")


def comparison_table(model_rows, exact_rows) -> str:
    """A Markdown table of two studies' rows (``StudyTable.rows`` of this run) side by side: sliced W2 (with its
    floor), mode masses (total variation, largest z) and moments (largest z), the trained network's against the
    exact score's, matched by (label, budget, seed)."""
    def by_key(rows):
        return {(r["label"], r["budget"], r["seed"]): r for r in rows}
    model, exact = by_key(model_rows), by_key(exact_rows)
    head = ["method", "budget", "seed", "NFE", "sw2 trained", "sw2 exact", "sw2 floor", "modes TV trained",
            "modes TV exact", "moments trained", "moments exact", "verdict trained / exact"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for key, r in model.items():
        e = exact.get(key)
        floor = r.get("sw2_floor")
        lines.append("| " + " | ".join([
            key[0], key[1], str(key[2]), str(r.get("nfe")), _cell(r, "sw2"), _cell(e, "sw2"),
            "-" if floor is None else f"{floor:.3g} ± {r.get('sw2_floor_std', 0):.2g}",
            _cell(r, "modes"), _cell(e, "modes"), _cell(r, "moments"), _cell(e, "moments"),
            f"{r['verdict']} / {e['verdict'] if e else '-'}"]) + " |")
    return "\n".join(lines)
