"""sdekit's own steppers as methods of backend ``"sdekit"``: fixed-step ones integrated by the stepping layer's
loop, adaptive ones by its adaptive loop (a step size per sample)."""

import functools

from .._stepping import ADAPTIVE_STEPPERS, STEPPERS, run, run_adaptive
from ._base import Method


def _integrate(stepper_class, method, problem):
    return run(stepper_class, method, problem)


def _integrate_adaptive(stepper_class, method, problem):
    return run_adaptive(stepper_class, method, problem)


def _register():
    from . import register
    for cls in STEPPERS:
        stochastic = cls.kind == "sde"
        ode_order = cls.order if not stochastic or getattr(cls, "deterministic_on_ode", False) else None
        register(Method(
            name=cls.name, backend="sdekit", kind=cls.kind, order=ode_order,
            weak_order=cls.order if stochastic else None, stepping="fixed",
            integrate=functools.partial(_integrate, cls), sde_type="ito" if stochastic else None,
            description=cls.description, frame=cls.frame, needs=cls.needs, history=cls.history,
            error_estimate=cls.error_estimate, schedule=cls.schedule,
            grid_steps=cls.grid_steps, notes=cls.notes,
            options=tuple(sorted(cls.defaults)) + cls.loop_options,
            processes=("ode",) if not stochastic else ("sde", "ode") if ode_order is not None else ("sde",)))

    for cls in ADAPTIVE_STEPPERS:
        stochastic = cls.kind == "sde"
        register(Method(
            name=cls.name, backend="sdekit", kind=cls.kind, order=cls.strong_order if stochastic else cls.order,
            weak_order=cls.order if stochastic else None, order_additive=getattr(cls, "order_additive", None),
            stepping="adaptive", integrate=functools.partial(_integrate_adaptive, cls),
            sde_type="ito" if stochastic else None, description=cls.description, frame=cls.frame, needs=cls.needs,
            error_estimate=True, options=tuple(sorted(cls.defaults)) + cls.loop_options,
            default_rtol=cls.default_rtol, default_atol=cls.default_atol, notes=cls.notes,
            processes=("sde", "ode") if stochastic else ("ode",)))


_register()
