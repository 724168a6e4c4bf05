"""The method registry: every method declared, listed, printable and reachable by name; package layering."""

import ast
import pathlib

import pytest
import torch

import sdekit
from sdekit._methods import REGISTRY

pytestmark = pytest.mark.usefixtures("single_thread")

EXPECTED = {
    "torchsde": {"euler", "milstein", "srk", "heun", "midpoint", "reversible_heun", "log_ode", "euler_heun"},
    "torchdiffeq": {"dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun", "euler", "midpoint", "rk4"},
    "scipy": {"RK45", "DOP853", "Radau", "LSODA"},
    "sdekit": {"ddim", "dpm_solver_2", "dpm_solver_3", "dpm_solver_fast", "dpmpp_2s", "dpmpp_2m", "dpmpp_3m", "unipc", "edm_heun", "lms",
               "ipndm", "deis", "euler_ancestral", "dpmpp_2m_sde", "dpmpp_sde", "edm_stochastic", "restart", "pc"},
}


def test_registry_holds_the_expected_methods():
    table = sdekit.methods()
    by_backend = {}
    for m in table:
        by_backend.setdefault(m.backend, set()).add(m.name)
    for backend, names in EXPECTED.items():
        assert names <= by_backend.get(backend, set()), (backend, names - by_backend.get(backend, set()))
    assert len(table) == len(REGISTRY)
    assert {m.qualified_name for m in table} == set(REGISTRY)


@pytest.mark.parametrize("m", list(sdekit.methods()), ids=lambda m: m.qualified_name)
def test_method_declares_what_it_is(m):
    assert isinstance(m, sdekit.Method)
    assert m.name and m.backend in ("torchsde", "torchdiffeq", "scipy", "sdekit")
    assert m.kind in ("sde", "ode")
    assert m.stepping in ("fixed", "adaptive", "either")
    assert m.adaptive == (m.stepping != "fixed")
    assert m.description
    assert callable(m.integrate)
    assert m.qualified_name == f"{m.backend}.{m.name}"
    assert m.frame in ("t", "sigma", "logsnr") and m.needs in ("drift", "score", "x0", "eps")
    assert m.history >= 0 and isinstance(m.error_estimate, bool) and m.schedule in sdekit.SCHEDULES
    assert set(m.accepts) <= {"sde", "ode"} and m.kind in m.accepts
    if m.backend == "sdekit":       # diffusion samplers: stochastic ones declare a weak order where known
        assert m.stepping in ("fixed", "adaptive") and m.options is not None and "denoise" in m.options
        assert m.kind == "sde" or (m.order > 0 and m.sde_type is None)
        assert m.accepts == (("ode",) if m.kind == "ode" else ("sde", "ode") if m.order else ("sde",))
    elif m.kind == "sde":
        assert m.sde_type in ("ito", "stratonovich")
        assert m.order > 0 and (m.weak_order is None or m.weak_order > 0) and m.order_additive >= m.order
        assert m.levy_area in ("none", "space-time", "davie", "foster")
    else:
        assert m.sde_type is None
        assert m.order is None or m.order > 0
    with pytest.raises(Exception):
        m.name = "changed"  # frozen


def test_declared_orders_are_compared_with_measured_ones(monkeypatch):
    """The registry's orders are what the order studies (tests/orders, every method) measure against: here one
    ODE and one SDE method are measured quickly, and a wrong declaration is shown to be caught."""
    import dataclasses

    from sdekit.validation import ode_order, strong_order
    rk4 = ode_order("torchdiffeq.rk4", "VE", steps=(8, 16, 32, 64))
    euler = strong_order("euler", "gbm", ks=range(4, 8), batch=500)
    assert rk4.declared == REGISTRY["torchdiffeq.rk4"].order and rk4.within(0.3), rk4.describe()
    assert euler.declared == REGISTRY["torchsde.euler"].order and euler.within(0.3), euler.describe()
    monkeypatch.setitem(REGISTRY, "torchdiffeq.rk4", dataclasses.replace(REGISTRY["torchdiffeq.rk4"], order=3))
    wrong = ode_order("torchdiffeq.rk4", "VE", steps=(8, 16, 32, 64))
    assert wrong.declared == 3 and not wrong.within(0.3)


def test_filters():
    sde_methods = sdekit.methods(kind="sde")
    ode_methods = sdekit.methods(kind="ode")
    assert sde_methods and all(m.kind == "sde" for m in sde_methods)
    assert ode_methods and all(m.kind == "ode" for m in ode_methods)
    assert len(sde_methods) + len(ode_methods) == len(sdekit.methods())
    assert {m.name for m in sdekit.methods(backend="scipy")} == EXPECTED["scipy"]
    assert list(sdekit.methods(kind="sde", backend="scipy")) == []


def test_table_prints_every_method():
    table = sdekit.methods()
    text = str(table)
    lines = text.splitlines()
    assert len(lines) == len(table) + 1
    header = lines[0].split()
    for col in ("method", "backend", "kind", "takes", "order", "stepping", "frame", "needs", "history", "err_est",
                "schedule", "notes"):
        assert col in header
    assert "steps= counts evaluations" in text and "order 3 with warmup='singlestep'" in text
    for m, line in zip(table, lines[1:]):
        assert line.endswith(m.notes)
        cells = line[:len(line) - len(m.notes)].split()
        assert cells[0] == m.name and cells[1] == m.backend and cells[2] == m.kind.upper()
        assert cells[3] == "+".join(k.upper() for k in m.accepts) and cells[-1] in (m.schedule, "-")
        assert m.stepping in cells
    assert repr(table) == text


@pytest.mark.parametrize("m", list(sdekit.methods()), ids=lambda m: m.qualified_name)
def test_every_method_reachable_by_name(m):
    """By qualified name always, by short name where it is unique or matches the process's kind."""
    sde = sdekit.VPSDE()
    x = sde.prior_sampling((2, 2), dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def score(x, t):
        return -x

    proc = sdekit.reverse(sde, score) if m.kind == "sde" else sdekit.probability_flow(sde, score)
    kw = dict(steps=2) if m.stepping != "adaptive" else dict(rtol=1e-3, atol=1e-3)
    if m.kind == "sde":
        kw["seed"] = 0
    # a short name shared by two methods of the same kind (bosh3, dopri5) resolves to the first registered
    first = next(o for o in sdekit.methods() if o.name == m.name and o.kind == m.kind)
    for name, want in ((m.qualified_name, m), (m.name, first)):
        sol = proc.solve(x, method=name, **kw)
        assert (sol.method, sol.backend) == (want.name, want.backend)


def test_short_names_are_case_insensitive_where_unambiguous():
    sde = sdekit.VPSDE()
    x = sde.prior_sampling((2, 2), dtype=torch.float64)
    sol = sdekit.probability_flow(sde, lambda x, t: -x).solve(x, method="rk45", rtol=1e-3, atol=1e-3)
    assert sol.method == "RK45"


# ---------------------------------------------------------------------------------------------
# Layering: nothing in sdekit/ imports adapters/ or validation/
# ---------------------------------------------------------------------------------------------

FORBIDDEN = ("adapters", "validation")


def _imported_modules(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            base = ("." * node.level) + (node.module or "")
            yield base
            for alias in node.names:
                yield f"{base}.{alias.name}" if base else alias.name
        elif isinstance(node, ast.Call):
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            if name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
                yield str(node.args[0].value)


def test_core_does_not_import_adapters_or_validation():
    root = pathlib.Path(sdekit.__file__).parent
    sources = sorted(root.rglob("*.py"))
    assert len(sources) >= 10
    offenders = []
    for path in sources:
        tree = ast.parse(path.read_text(), filename=str(path))
        for mod in _imported_modules(tree):
            parts = mod.replace("..", ".").strip(".").split(".")
            if any(p in FORBIDDEN for p in parts):
                offenders.append(f"{path.relative_to(root)}: {mod}")
    assert not offenders, offenders
