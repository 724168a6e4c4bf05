"""DiffusersScheduler: sdekit's samplers inside diffusers' own pipelines equal sdekit's own solve.

Tiny seeded, randomly initialised networks; nothing is downloaded.  The DDPM pipeline runs every fixed-step
method that integrates the probability flow; the Stable Diffusion pipeline (a tiny UNet2DConditionModel and
AutoencoderKL, ``prompt_embeds`` given, guidance 3) runs them too.  diffusers' StableDiffusionPipeline module
imports the text-model libraries (transformers, tokenizers) at the top although a pipeline fed ``prompt_embeds``
never uses them; :func:`_stable_diffusion_pipeline_class` imports it with empty stand-ins for those two modules,
then removes them.  The tolerance is 64 float32 ulps of the state's scale, as in the adapter's own tests.
"""

import copy
import gc
import importlib
import sys
import threading
import types
import warnings

import pytest
import torch

import sdekit
from sdekit.adapters import DiffusersScheduler, from_diffusers

from diffusers import (AutoencoderKL, DDPMPipeline, DDPMScheduler, DPMSolverMultistepScheduler, PNDMScheduler,
                       UNet2DConditionModel)  # the diffusers extra

ULPS = 64 * torch.finfo(torch.float32).eps

#: every fixed-step method that integrates the probability flow
FLOW_METHODS = sorted(m.qualified_name for m in sdekit.methods() if "ode" in m.accepts and m.stepping != "adaptive")
STOCHASTIC = ["euler_ancestral", "dpmpp_2m_sde", "dpmpp_sde", "edm_stochastic", "restart", "pc"]
STEPS = 5


def _close(got, ref):
    scale = float(ref.abs().max())
    assert float((got - ref).abs().max()) <= ULPS * scale, float((got - ref).abs().max()) / scale


def _reference(unet, config, x_T, scheduler, steps=STEPS, seed=None, **solve):
    """sdekit's own solve: ``from_diffusers(unet, config)`` and the scheduler's method, process and options."""
    a = from_diffusers(unet, config, quantise=scheduler.config.quantise)
    make = sdekit.probability_flow if scheduler.process == "probability_flow" else sdekit.reverse
    extra = dict(solve)
    if scheduler.config.options:
        extra["options"] = dict(scheduler.config.options)
    if seed is not None:
        extra["seed"] = seed
    if "grid" not in extra:
        extra["steps"] = steps
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", message=".*between its scheduler's integer timesteps")
        return make(a.sde, a).solve(x_T, method=scheduler.method.qualified_name, **extra)


@pytest.fixture(scope="module")
def config():
    return DDPMScheduler(num_train_timesteps=1000, clip_sample=False).config


def _ddpm(unet, scheduler, batch=2, seed=3, steps=STEPS, generator=None):
    pipe = DDPMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(seed) if generator is None else generator
    images = pipe(batch_size=batch, generator=generator, num_inference_steps=steps, output_type="pt").images
    return images, scheduler.solution


def _x_T(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# -- exactness ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", FLOW_METHODS)
def test_every_fixed_step_flow_method_in_a_ddpm_pipeline_is_sdekits_solve(unet, config, method):
    scheduler = DiffusersScheduler.from_config(config, method=method)
    calls = []
    hook = unet.register_forward_hook(lambda module, args, out: calls.append(int(args[1])))
    try:
        images, solution = _ddpm(unet, scheduler)
    finally:
        hook.remove()
    ref = _reference(unet, config, _x_T((2, 2, 8, 8), 3), scheduler)
    _close(solution.x, ref.x)
    _close(images, (ref.x / 2 + 0.5).clamp(0, 1))
    # one timestep per network evaluation, the ones the UNet saw, and as many as sdekit's solve counts
    assert calls == scheduler.timesteps.tolist() and len(calls) == ref.nfe == solution.nfe
    assert scheduler.order == max(1, ref.nfe // STEPS)


def _stable_diffusion_pipeline_class():
    """diffusers' StableDiffusionPipeline, imported with empty stand-ins for transformers and tokenizers."""
    import diffusers.loaders as loaders
    import diffusers.pipelines.pipeline_utils  # noqa: F401  (diffusers probes for the real packages first)

    def stand_in(name):
        module = types.ModuleType(name)
        module.__path__ = []

        def attribute(attr):
            if attr.startswith("__"):
                raise AttributeError(attr)
            return type(attr, (), {})
        module.__getattr__ = attribute
        return module

    names = ("transformers", "tokenizers")
    before = {n: sys.modules.get(n) for n in names}
    sys.modules.update({n: stand_in(n) for n in names})
    try:
        for sub, attr in (("single_file", "FromSingleFileMixin"), ("ip_adapter", "IPAdapterMixin"),
                          ("lora_pipeline", "StableDiffusionLoraLoaderMixin"),
                          ("textual_inversion", "TextualInversionLoaderMixin")):
            if not hasattr(loaders, attr):
                setattr(loaders, attr, getattr(importlib.import_module(f"diffusers.loaders.{sub}"), attr))
        module = importlib.import_module("diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion")
    finally:
        for n, m in before.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m
    return module.StableDiffusionPipeline


@pytest.fixture(scope="module")
def stable_diffusion():
    """A tiny Stable Diffusion pipeline (random UNet2DConditionModel and AutoencoderKL, SD's scaled-linear table),
    its prompt embeddings and its UNet."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(8, 16), norm_num_groups=4,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8,
                                attention_head_dim=2).eval()
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                        up_block_types=("UpDecoderBlock2D",), block_out_channels=(8,), latent_channels=4,
                        norm_num_groups=4, layers_per_block=1).eval()
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                              steps_offset=1)
    pipe = _stable_diffusion_pipeline_class()(vae=vae, text_encoder=None, tokenizer=None, unet=unet,
                                              scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                              requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    return pipe, torch.randn(2, 3, 8, generator=g), torch.randn(2, 3, 8, generator=g)


@pytest.mark.parametrize("method", FLOW_METHODS)
def test_every_fixed_step_flow_method_in_a_guided_stable_diffusion_pipeline(stable_diffusion, method):
    pipe, cond, uncond = stable_diffusion
    config = pipe.scheduler.config
    pipe.scheduler = DiffusersScheduler.from_config(config, method=method)
    latents = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, guidance_scale=3.0, num_inference_steps=STEPS,
                   height=8, width=8, generator=torch.Generator().manual_seed(1), output_type="latent").images
    unet = pipe.unet

    def guided(x, tau, **inputs):     # the pipeline's classifier-free guidance, on the doubled batch
        u, c = unet(torch.cat([x, x]), torch.cat([tau, tau]), encoder_hidden_states=torch.cat([uncond, cond])
                    ).sample.chunk(2)
        return u + 3.0 * (c - u)

    ref = _reference(guided, pipe.scheduler.config, _x_T((2, 4, 8, 8), 1), pipe.scheduler)
    _close(latents, ref.x)


def test_an_explicit_grid_and_a_schedule(unet, config):
    grid = [1.0, 0.7, 0.45, 0.2, 0.06, 0.001]
    scheduler = DiffusersScheduler.from_config(config, method="dpmpp_3m", grid=grid)
    _, solution = _ddpm(unet, scheduler)
    _close(solution.x, _reference(unet, config, _x_T((2, 2, 8, 8), 3), scheduler, grid=grid).x)
    assert scheduler.grid.tolist() == grid and len(scheduler.timesteps) == 5
    # a grid handed to set_timesteps (an optimised schedule, say) and a schedule= in the config
    scheduler = DiffusersScheduler.from_config(config, method="unipc", schedule="karras")
    scheduler.set_timesteps(grid=torch.tensor(grid, dtype=torch.float64))
    assert len(scheduler.timesteps) == 5
    _, solution = _ddpm(unet, scheduler)      # the pipeline's own set_timesteps(5) plans the karras grid
    _close(solution.x, _reference(unet, config, _x_T((2, 2, 8, 8), 3), scheduler, schedule="karras").x)


def test_fractional_timesteps_with_quantise_false(unet, config):
    scheduler = DiffusersScheduler.from_config(config, method="dpm_solver_2", quantise=False)
    _, solution = _ddpm(unet, scheduler)
    ts = scheduler.timesteps
    assert ts.dtype == torch.float32 and bool((ts != ts.round()).any())
    _close(solution.x, _reference(unet, config, _x_T((2, 2, 8, 8), 3), scheduler).x)
    _, rounded = _ddpm(unet, DiffusersScheduler.from_config(config, method="dpm_solver_2"))
    assert not torch.equal(rounded.x, solution.x)


def test_a_final_denoising_step_is_one_more_evaluation(unet, config):
    scheduler = DiffusersScheduler.from_config(config, method="dpmpp_2m", options={"denoise": True})
    _, solution = _ddpm(unet, scheduler)
    assert len(scheduler.timesteps) == STEPS + 1 and int(scheduler.timesteps[-1]) == 0
    _close(solution.x, _reference(unet, config, _x_T((2, 2, 8, 8), 3), scheduler).x)


def test_options_reach_the_method(unet, config):
    scheduler = DiffusersScheduler.from_config(config, method="dpmpp_3m", options={"lower_order_final": False},
                                               schedule="uniform")
    _, solution = _ddpm(unet, scheduler)
    ref = _reference(unet, config, _x_T((2, 2, 8, 8), 3), scheduler, schedule="uniform")
    _close(solution.x, ref.x)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = from_diffusers(unet, config)
        default = sdekit.probability_flow(a.sde, a).solve(_x_T((2, 2, 8, 8), 3), method="dpmpp_3m", steps=STEPS,
                                                          schedule="uniform").x
    assert float((default - ref.x).abs().max()) > 1e-3 * float(ref.x.abs().max())   # the option changed the solve


# -- stochastic samplers -----------------------------------------------------------------------------------------
def _drawn_seed(seed, shape):
    """The pipeline's generator after its initial noise, and the seed the scheduler draws from it."""
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn(shape, generator=g)
    hi, lo = torch.randint(0, 2 ** 32, (2,), generator=g, dtype=torch.int64).tolist()
    return x_T, (hi << 32) | lo


@pytest.mark.parametrize("method", STOCHASTIC + ["ddim"])
def test_a_seeded_stochastic_pipeline_repeats_bit_for_bit_and_is_sdekits_solve(unet, config, method):
    process = "reverse" if method == "ddim" else None
    scheduler = DiffusersScheduler.from_config(config, method=method, process=process)
    assert scheduler.process == "reverse"
    first, solution = _ddpm(unet, scheduler, seed=5)
    again, _ = _ddpm(unet, scheduler, seed=5)
    other, _ = _ddpm(unet, scheduler, seed=6)
    assert torch.equal(first, again) and not torch.equal(first, other)
    x_T, seed = _drawn_seed(5, (2, 2, 8, 8))
    _close(solution.x, _reference(unet, config, x_T, scheduler, seed=seed).x)
    # a fixed seed= keys the noise whatever the generator
    fixed = DiffusersScheduler.from_config(config, method=method, process=process, seed=1234)
    _, solution = _ddpm(unet, fixed, seed=5)
    _close(solution.x, _reference(unet, config, x_T, fixed, seed=1234).x)


def test_sample_i_does_not_depend_on_the_batch(unet, config):
    scheduler = DiffusersScheduler.from_config(config, method="dpmpp_2m_sde")
    gens = lambda n: [torch.Generator().manual_seed(10 + i) for i in range(n)]     # noqa: E731
    two, _ = _ddpm(unet, scheduler, batch=2, generator=gens(2))
    three, _ = _ddpm(unet, scheduler, batch=3, generator=gens(3))
    _close(three[:2], two)
    # the noise matters: the same initial noise under another seed gives other samples
    moved, _ = _ddpm(unet, DiffusersScheduler.from_config(config, method="dpmpp_2m_sde", seed=7), batch=2,
                     generator=gens(2))
    assert float((moved - two).abs().max()) > 1e-3


# -- what a pipeline expects of a scheduler ---------------------------------------------------------------------
def test_save_and_load_round_trip_and_swapping_back(unet, config, tmp_path):
    scheduler = DiffusersScheduler.from_config(config, method="deis", schedule="karras",
                                               options={"order": 2}, prediction_type="v_prediction")
    scheduler.save_pretrained(tmp_path)
    loaded = DiffusersScheduler.from_pretrained(tmp_path)
    assert {k: v for k, v in loaded.config.items() if not k.startswith("_")} == \
        {k: v for k, v in scheduler.config.items() if not k.startswith("_")}
    scheduler.set_timesteps(6)
    loaded.set_timesteps(6)
    assert torch.equal(scheduler.timesteps, loaded.timesteps)
    _, a = _ddpm(unet, scheduler)
    _, b = _ddpm(unet, loaded)
    assert torch.equal(a.x, b.x)
    # a pipeline saved with it loads it back
    pipe = DDPMPipeline(unet=unet, scheduler=scheduler)
    pipe.save_pretrained(tmp_path / "pipeline")
    again = DDPMPipeline.from_pretrained(tmp_path / "pipeline")
    assert isinstance(again.scheduler, DiffusersScheduler) and again.scheduler.config.method == "deis"
    # a diffusers scheduler built from this config has the same table
    back = DPMSolverMultistepScheduler.from_config(scheduler.config)
    torch.testing.assert_close(back.alphas_cumprod.double(), scheduler.alphas_cumprod, rtol=1e-6, atol=0)
    assert back.config.prediction_type == "v_prediction"


def test_pipeline_helpers(config):
    scheduler = DiffusersScheduler.from_config(config, method="edm_heun")
    assert scheduler.init_noise_sigma == 1.0 and len(scheduler) == 1000
    x = torch.randn(3, 2, 4, 4)
    assert scheduler.scale_model_input(x, 999) is x
    noise = torch.randn(3, 2, 4, 4)
    steps = torch.tensor([0, 500, 999])
    _close(scheduler.add_noise(x, noise, steps), DDPMScheduler.from_config(config).add_noise(x, noise, steps))
    scheduler.set_timesteps(4)
    # diffusers' convention for multi-evaluation schedulers: order = evaluations per step
    assert scheduler.order == 2 and len(scheduler.timesteps) == 8 and scheduler.timesteps.dtype == torch.int64


def test_image_to_image_starts_at_a_step(unet, config):
    scheduler = DiffusersScheduler.from_config(config, method="edm_heun")
    scheduler.set_timesteps(6)
    begin = 2 * scheduler.order
    scheduler.set_begin_index(begin)
    x = _x_T((2, 2, 8, 8), 4)
    x_T = x
    with torch.no_grad():
        for t in scheduler.timesteps[begin:]:
            x = scheduler.step(unet(x, t).sample, t, x).prev_sample
    grid = sdekit.schedule_grid(from_diffusers(unet, config).sde, "karras", 6, 1.0, 1e-3)[2:]
    _close(x, _reference(unet, config, x_T, scheduler, grid=grid).x)
    with pytest.raises(sdekit.InvalidParameterError, match="multiple of order=2"):
        scheduler.set_timesteps(6)
        scheduler.set_begin_index(3)
        scheduler.step(unet(x_T, scheduler.timesteps[3]).sample, scheduler.timesteps[3], x_T)


def test_float64_end_to_end(unet, config):
    net = copy.deepcopy(unet).double()
    scheduler = DiffusersScheduler.from_config(config, method="unipc")
    scheduler.set_timesteps(STEPS)
    x = x_T = _x_T((2, 2, 8, 8), 5).double()
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(net(x, t).sample, t, x).prev_sample
    ref = _reference(net, config, x_T, scheduler).x
    assert x.dtype == torch.float64
    scale = float(ref.abs().max())
    assert float((x - ref).abs().max()) <= 64 * torch.finfo(torch.float64).eps * scale


# -- robustness ---------------------------------------------------------------------------------------------------
def _running():
    return [t for t in threading.enumerate() if t.name == "sdekit-DiffusersScheduler"]


def _threads():
    """The scheduler's solve threads still running (one that has handed over its result is given a second to end)."""
    for t in _running():
        t.join(1.0)
    return _running()


def test_an_abandoned_loop_a_new_batch_and_collection_end_the_solve(unet, config):
    scheduler = DiffusersScheduler.from_config(config, method="dpmpp_2m")
    scheduler.set_timesteps(5)
    x = _x_T((2, 2, 8, 8), 0)
    with torch.no_grad():
        for t in scheduler.timesteps[:2]:
            x = scheduler.step(unet(x, t).sample, t, x).prev_sample
    assert len(_running()) == 1
    twin = copy.deepcopy(scheduler)                     # a copy carries the plan, not the running solve
    assert twin.step_index is None and torch.equal(twin.timesteps, scheduler.timesteps)
    _, copied = _ddpm(unet, twin, batch=1)
    assert copied.x.shape[0] == 1 and len(_running()) >= 1     # the original still waits
    _, solution = _ddpm(unet, scheduler, batch=3)       # set_timesteps cancels the abandoned solve
    assert solution.x.shape[0] == 3 and not _threads()
    with pytest.raises(sdekit.InvalidParameterError, match="set_timesteps"):
        scheduler.step(solution.x, scheduler.timesteps[0], solution.x)
    scheduler.set_timesteps(5)
    x = _x_T((1, 2, 8, 8), 0)
    with torch.no_grad():
        t = scheduler.timesteps[0]
        scheduler.step(unet(x, t).sample, t, x)
    assert len(_running()) == 1
    del scheduler
    gc.collect()
    assert not _threads()


def test_errors_inside_the_solve_and_misuse_are_one_line(unet, config):
    scheduler = DiffusersScheduler.from_config(config, method="dpmpp_2m")
    x = _x_T((2, 2, 8, 8), 0)
    with pytest.raises(sdekit.InvalidParameterError, match="set_timesteps"):
        scheduler.step(x, 999, x)
    scheduler.set_timesteps(5)
    with pytest.raises(sdekit.ScoreFunctionError, match="shape") as err:
        scheduler.step(x[:1], scheduler.timesteps[0], x)       # an output of another batch
    assert "\n" not in str(err.value) and not _threads()
    scheduler.set_timesteps(5)
    with torch.no_grad():
        t = scheduler.timesteps[0]
        x1 = scheduler.step(unet(x, t).sample, t, x).prev_sample
        with pytest.raises(sdekit.InvalidParameterError, match="timestep"):
            scheduler.step(unet(x1, t).sample, t, x1)          # the same timestep again
        scheduler.set_timesteps(5)
        x1 = scheduler.step(unet(x, t).sample, t, x).prev_sample
        t1 = scheduler.timesteps[1]
        with pytest.raises(sdekit.InvalidParameterError, match="changed the latents"):
            scheduler.step(unet(x1 + 1, t1).sample, t1, x1 + 1)
    assert not _threads()


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(method="dpmpp2m"), sdekit.UnknownMethodError, "did you mean 'dpmpp_2m'"),
    (dict(method="dopri5"), sdekit.MethodArgumentError, "adapts its steps"),
    (dict(method="dpm_adaptive"), sdekit.MethodArgumentError, "adapts its steps"),
    (dict(method="ddim", options={"eta": 0.5}), sdekit.InvalidParameterError, "eta"),
    (dict(method="euler_ancestral", options={"s_noise": -1.0}), sdekit.InvalidParameterError, "s_noise"),
    (dict(method="dpmpp_2m", options={"eta": 1.0}), sdekit.MethodArgumentError, "eta"),
    (dict(method="dpmpp_2m", seed=3), sdekit.InvalidParameterError, "deterministic"),
    (dict(method="euler_ancestral", seed=-1), sdekit.InvalidParameterError, "seed"),
    (dict(method="dpmpp_2m", process="reverse"), sdekit.MethodArgumentError, "probability flow only"),
    (dict(method="euler_ancestral", process="probability_flow"), sdekit.MethodArgumentError, "reverse SDE only"),
    (dict(method="euler_ancestral", process="sde"), sdekit.InvalidParameterError, "process"),
    (dict(method="torchsde.euler", process="reverse"), sdekit.MethodArgumentError, "keyed"),
    (dict(method="dpmpp_2m", grid=[1.0, 0.5, 0.7]), sdekit.InvalidParameterError, "grid"),
    (dict(method="dpmpp_2m", grid=[1.0, 0.5], schedule="karras"), sdekit.InvalidParameterError, "not both"),
    (dict(method="dpmpp_2m", schedule="cosine"), sdekit.InvalidParameterError, "schedule"),
    (dict(method="dpmpp_2m", options=3), sdekit.ArgumentTypeError, "options"),
    (dict(method="dpmpp_2m", rescale_betas_zero_snr=True), sdekit.InvalidParameterError, "zero-terminal-SNR"),
])
def test_bad_input_is_refused_in_one_line(config, kwargs, error, match):
    with pytest.raises(error, match=match) as err:
        DiffusersScheduler.from_config(config, **kwargs)
    assert "\n" not in str(err.value)


def test_set_timesteps_refuses_bad_steps(config):
    scheduler = DiffusersScheduler.from_config(config, grid=[1.0, 0.5, 0.001])
    with pytest.raises(sdekit.InvalidParameterError, match="num_inference_steps=2"):
        scheduler.set_timesteps(50)
    with pytest.raises(sdekit.InvalidParameterError, match="positive integer"):
        DiffusersScheduler.from_config(config).set_timesteps(0)
