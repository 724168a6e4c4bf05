"""The multistep samplers' orders follow the grid's steps in log-SNR (``step_orders``), on any grid."""

import math

import pytest
import torch

import sdekit
from sdekit._stepping._dpmpp_multistep import LONG_LAST_STEP, REACH, step_orders
from sdekit.validation import GaussianMixture


def test_equal_short_steps_warm_up_and_keep_the_full_order():
    lam = [-4 + 0.5 * k for k in range(12)]
    assert step_orders(lam, 3, True) == [1, 2] + [3] * 9


def test_a_long_last_step_ends_with_falling_orders():
    lam = [-8.0 + k for k in range(10)] + [1.0 + 1.01 * LONG_LAST_STEP]      # within REACH of the history
    assert step_orders(lam, 3, False) == [1, 2] + [3] * 8
    got = step_orders(lam, 3, True)
    assert got[-2:] == [2, 1] and got[:-2] == [1, 2] + [3] * 6
    assert step_orders(lam, 3, True, last_order=2)[-2:] == [3, 2]


def test_the_reach_lowers_a_step_beyond_twice_its_nodes_span():
    short_jump = [-4 + 0.5 * k for k in range(10)] + [0.5 + 1.4]       # 1.4 <= REACH * (0.5 + 0.5), <= 1.5
    assert step_orders(short_jump, 3, True)[-1] == 3
    long_jump = [-4 + 0.5 * k for k in range(10)] + [0.5 + 2.5]        # beyond twice both spans
    assert step_orders(long_jump, 3, True)[-1] == 1


def test_without_lower_order_final_the_orders_only_warm_up():
    lam = [0.0, 0.1, 0.2, 0.3, 0.8, 0.9, 4.0]
    assert step_orders(lam, 3, False) == [1, 2, 3, 3, 3, 3]


def test_a_sudden_jump_in_the_middle_uses_fewer_nodes():
    lam = [0.0, 0.1, 0.2, 0.3, 0.8, 0.9, 1.0]
    # step 3 (0.3 -> 0.8) reaches beyond REACH times the span of two (0.2) and of three nodes (0.1): order 1;
    # the next steps' nodes span the jump, and the full order comes back
    assert 0.5 > REACH * 0.2
    assert step_orders(lam, 3, True) == [1, 2, 3, 1, 3, 3]
    assert step_orders(lam, 2, True) == [1, 2, 2, 1, 2, 2]


def test_the_rule_reads_step_sizes_not_direction_or_count():
    lam = [0.3 * k for k in range(30)]
    assert step_orders(lam, 2, True) == step_orders([-v for v in lam], 2, True) == [1] + [2] * 28


def _linspace_grid(sde, steps, train=1000):
    """diffusers' linspace timesteps k of a 1000-step table, as times t = (k + 1) / 1000, ending at 1e-3."""
    ks = [round(v) for v in torch.linspace(0, train - 1, steps + 1, dtype=torch.float64).tolist()][::-1][:-1]
    return torch.tensor([(k + 1) / train for k in ks] + [1 / train], dtype=torch.float64)


@pytest.mark.parametrize("method,options", [("dpmpp_2m", {}), ("dpmpp_3m", {}), ("unipc", {"variant": "bh1"}),
                                            ("unipc", {"variant": "bh2"})])
def test_on_diffusers_linspace_grid_lowering_the_long_last_step_wins(method, options):
    """The linspace grid's last step jumps by > 3 in log-SNR: the rule lowers it, and the error falls."""
    sde = sdekit.VPSDE()
    data = GaussianMixture.default_2d(sde)
    grid = _linspace_grid(sde, 10)
    lam = sde.log_snr(grid)
    assert float(lam[-1] - lam[-2]) > 2 * LONG_LAST_STEP
    x = sde.prior_sampling((400, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ode = sdekit.probability_flow(sde, data.score)
    truth = ode.solve(x, method="dopri5", t_end=float(grid[-1]), rtol=1e-10, atol=1e-10).x

    def rms(opts):
        sol = ode.solve(x, method=method, grid=grid, options={**options, **opts})
        return math.sqrt(float((sol.x - truth).pow(2).sum(-1).mean()))

    lowered = rms({})
    kept = rms({"lower_order_final": False})      # warm-up only: what a 10-step grid got before
    assert lowered < 0.8 * kept, (lowered, kept)
