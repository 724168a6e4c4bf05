"""sdekit's own steppers as methods of backend ``"sdekit"``, integrated by the stepping layer's one loop."""

import functools

from .._stepping import STEPPERS, run
from ._base import Method


def _integrate(stepper_class, method, problem):
    return run(stepper_class, method, problem)


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
            options=tuple(sorted(cls.defaults)) + ("denoise", "hook"),
            processes=("ode",) if not stochastic else ("sde", "ode") if ode_order is not None else ("sde",)))


_register()
