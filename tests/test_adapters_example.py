"""The worked conditional-generation example of docs/adapters.md runs and says what the page says."""

import pytest
import torch

from sdekit.adapters import example


def test_example_rows_put_the_mass_where_the_page_says(tmp_path):
    mix, rows = example.run(n=600, steps=15)
    by_name = {name: (x, nfe, masses) for name, x, nfe, masses, _ in rows}
    n = 600
    se = (mix.weights * (1 - mix.weights) / n).sqrt()
    assert bool(((by_name["unconditional"][2].masses - mix.weights).abs() <= 4 * se).all())
    for k in range(3):
        for w in (1, 4):
            assert float(by_name[f"classifier k={k} w={w}"][2].masses[k]) > 1 - 1 / n
    assert by_name["classifier-free k=1 w=1"][1] == 2 * by_name["unconditional"][1]
    # imputation at x1 = 2.2: on this problem the modes' masses match the exact conditional p(k | x1)
    w, mu, cov = mix.weights, mix.means[:, 0], mix.covs[:, 0, 0]
    like = w * torch.exp(-0.5 * (2.2 - mu) ** 2 / cov) / cov.sqrt()
    exact = like / like.sum()
    got = by_name["imputation x1=2.2"][2].masses
    assert bool(((got - exact).abs() <= 4 * (exact * (1 - exact) / n).sqrt() + 1e-12).all()), (got, exact)
    assert "classifier k=0 w=1" in example._table(mix, rows)
    pytest.importorskip("matplotlib")
    example.figure(mix, rows, tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 10_000
