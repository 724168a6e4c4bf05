"""from_diffusers: sdekit's samplers on a diffusers UNet equal diffusers' own scheduler loops.

A tiny seeded, randomly initialised UNet2DModel on 8x8 images; nothing is downloaded.  diffusers is the
``diffusers`` extra, which ``make test`` installs.  diffusers computes
its scheduler coefficients in float32, so results agree to float32 rounding: the tolerance is 64 float32
ulps of the state's scale.
"""

import pytest
import torch

import sdekit
from sdekit.adapters import DiscreteVPSDE, from_diffusers

from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel  # the diffusers extra

ULPS = 64 * torch.finfo(torch.float32).eps


@pytest.fixture(scope="module")
def config():
    return DDPMScheduler(num_train_timesteps=1000, clip_sample=False).config


@pytest.fixture(scope="module")
def x_T():
    return torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(1))


def _diffusers_loop(unet, scheduler, x):
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x).prev_sample
    return x


def _close(got, ref):
    scale = float(ref.abs().max())
    assert float((got - ref).abs().max()) <= ULPS * scale, float((got - ref).abs().max()) / scale


def test_the_sde_is_the_schedulers_table(config):
    sched = DDPMScheduler.from_config(config)
    a = from_diffusers(lambda x, t: x, sched)
    assert isinstance(a.sde, DiscreteVPSDE) and a.sde.n == 1000 and a.sde.quantise
    torch.testing.assert_close(a.sde.alpha(a.sde.time(torch.arange(1000.0, dtype=torch.float64))) ** 2,
                               sched.alphas_cumprod.double(), rtol=1e-13, atol=0)
    cos = from_diffusers(lambda x, t: x, dict(config, beta_schedule="squaredcos_cap_v2"))
    # diffusers multiplies 1000 float32 factors: relative rounding up to 1000 float32 ulps at the end of the table
    torch.testing.assert_close(cos.sde.alphas_cumprod, DiscreteVPSDE.cosine(1000).alphas_cumprod,
                               rtol=1000 * torch.finfo(torch.float32).eps, atol=0)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_ddim_equals_diffusers_ddim_scheduler(unet, config, x_T, spacing, prediction):
    sched = DDIMScheduler.from_config(config, timestep_spacing=spacing, prediction_type=prediction,
                                      steps_offset=1 if spacing == "leading" else 0)
    sched.set_timesteps(10)
    ref = _diffusers_loop(unet, sched, x_T)
    a = from_diffusers(unet, sched)
    assert a.final_denoise
    with torch.no_grad():
        sol = sdekit.probability_flow(a.sde, a).solve(x_T, method="ddim", grid=a.grid(sched.timesteps),
                                                      options=dict(denoise=a.final_denoise))
        again = sdekit.probability_flow(a.sde, a).solve(x_T, **a.solve_arguments(sched))
    _close(sol.x, ref)
    assert sol.nfe == 10 and torch.equal(again.x, sol.x)


def test_ddim_without_alpha_to_one_ends_at_the_first_timestep(unet, config, x_T):
    sched = DDIMScheduler.from_config(config, timestep_spacing="leading", steps_offset=1, set_alpha_to_one=False)
    sched.set_timesteps(6)
    ref = _diffusers_loop(unet, sched, x_T)
    a = from_diffusers(unet, sched)
    grid = a.grid(sched)
    assert not a.final_denoise and float(grid[-1]) == 1 / 1000 and grid.numel() == 7
    with torch.no_grad():
        sol = sdekit.probability_flow(a.sde, a).solve(x_T, method="ddim", grid=grid)
        again = sdekit.probability_flow(a.sde, a).solve(x_T, **a.solve_arguments(sched))
    _close(sol.x, ref)
    assert torch.equal(again.x, sol.x)


@pytest.mark.parametrize("steps", [8, 20])
def test_dpmpp_2m_equals_diffusers_dpm_solver_multistep(unet, config, x_T, steps):
    sched = DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2)
    sched.set_timesteps(steps)
    ref = _diffusers_loop(unet, sched, x_T)
    a = from_diffusers(unet, sched)
    with torch.no_grad():
        # diffusers' last step to sigma = 0 is first order; every earlier one is second order
        sol = sdekit.probability_flow(a.sde, a).solve(x_T, method="dpmpp_2m", grid=a.grid(sched.timesteps),
                                                      options=dict(denoise=True, lower_order_final=False))
        again = sdekit.probability_flow(a.sde, a).solve(x_T, **a.solve_arguments(sched))
    _close(sol.x, ref)
    assert sol.nfe == steps and torch.equal(again.x, sol.x)


@pytest.mark.parametrize("steps", [8, 12, 16])
def test_dpmpp_2m_equals_diffusers_with_a_sigma_min_final_step(unet, config, x_T, steps):
    sched = DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2,
                                                    final_sigmas_type="sigma_min")
    sched.set_timesteps(steps)
    ref = _diffusers_loop(unet, sched, x_T)
    a = from_diffusers(unet, sched)
    assert not a.final_denoise
    with torch.no_grad():
        sol = sdekit.probability_flow(a.sde, a).solve(x_T, **a.solve_arguments(sched))
    _close(sol.x, ref)
    assert sol.nfe == steps


def test_solve_arguments_refuses_what_sdekit_cannot_reproduce(unet, config):
    a = from_diffusers(unet, config)
    cases = [
        (DDIMScheduler.from_config(config, timestep_spacing="linspace"), 10, "linspace"),
        (DDIMScheduler.from_config(config, clip_sample=True), 10, "clip_sample=False"),
        (DPMSolverMultistepScheduler.from_config(config, solver_order=3), 20, "2\\*phi_3"),
        (DDPMScheduler.from_config(config), 10, "not DDPMScheduler"),
    ]
    for sched, steps, match in cases:
        sched.set_timesteps(steps)
        with pytest.raises(sdekit.InvalidParameterError, match=match):
            a.solve_arguments(sched)
    with pytest.raises(sdekit.InvalidParameterError, match="set_timesteps"):
        a.solve_arguments(DDIMScheduler.from_config(config))


def test_grid_and_config_errors(unet, config):
    a = from_diffusers(unet, config)
    with pytest.raises(sdekit.InvalidParameterError, match="table 0..999"):
        a.grid([1000, 500])
    with pytest.raises(sdekit.InvalidParameterError, match="strictly decreasing"):
        a.grid([10, 500])
    with pytest.raises(sdekit.InvalidParameterError, match="integer"):
        a.grid(torch.tensor([900.5, 10.0]))
    with pytest.raises(sdekit.InvalidParameterError, match="prediction_type"):
        from_diffusers(unet, dict(config, prediction_type="flow_prediction"))
    with pytest.raises(sdekit.ArgumentTypeError):
        from_diffusers(unet, 3)


def test_learned_variance_unet_is_read_through_its_first_half(config, x_T):
    torch.manual_seed(0)
    net = UNet2DModel(sample_size=8, in_channels=2, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
                      norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D", "UpBlock2D")).eval()
    a = from_diffusers(net, dict(config, variance_type="learned_range"))
    with torch.no_grad():
        t = a.sde.time(torch.full((3,), 500.0, dtype=torch.float64))
        torch.testing.assert_close(a.noise(x_T, t), net(x_T, 500).sample[:, :2])


def test_classifier_free_guidance_on_a_class_conditional_unet_is_diffusers_batched_call(config, x_T):
    from sdekit.adapters import ClassifierFreeGuidance
    torch.manual_seed(0)
    net = UNet2DModel(sample_size=8, in_channels=2, out_channels=2, layers_per_block=1, block_out_channels=(8, 16),
                      norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D", "UpBlock2D"), num_class_embeds=4).eval()
    a = from_diffusers(net, config)
    labels, null = torch.tensor([1, 2, 0]), torch.tensor([3])
    guided = ClassifierFreeGuidance(a.with_inputs(class_labels=labels), a.with_inputs(class_labels=null), 5.0)
    assert guided.batched and guided.nfe_per_call == 2
    t = a.sde.time(torch.full((3,), 600.0, dtype=torch.float64))
    with torch.no_grad():    # what a diffusers pipeline does: one call on the doubled batch, then chunk
        uncond, cond = net(torch.cat([x_T, x_T]), 600, class_labels=torch.cat([null.expand(3), labels])).sample.chunk(2)
        got = guided.noise(x_T, t)
    _close(got, uncond + 5.0 * (cond - uncond))
