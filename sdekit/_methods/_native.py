"""sdekit's own steppers as methods of backend ``"sdekit"``, each integrated by the stepping layer's one driver."""

import functools

from .._stepping import ADAPTIVE_STEPPERS, STEPPERS, run
from ._base import Method, register


def _register():
    for cls in STEPPERS + ADAPTIVE_STEPPERS:
        stochastic = cls.kind == "sde"
        on_ode = not stochastic or cls.deterministic_on_ode
        register(Method(
            name=cls.name, backend="sdekit", kind=cls.kind,
            order=cls.strong_order if cls.strong_order is not None else cls.order if on_ode else None,
            weak_order=cls.weak_order, order_additive=cls.order_additive,
            stepping="adaptive" if cls.adaptive else "fixed",
            integrate=functools.partial(run, cls),
            sde_type="ito" if stochastic else None, description=cls.description, frame=cls.frame, needs=cls.needs,
            history=cls.history, error_estimate=cls.error_estimate, schedule=cls.schedule, grid_steps=cls.grid_steps,
            notes=cls.notes, options=tuple(sorted(cls.defaults)) + cls.loop_options,
            renamed_options=cls.renamed_options, default_rtol=cls.default_rtol, default_atol=cls.default_atol,
            processes=("sde", "ode") if stochastic and on_ode else ("sde",) if stochastic else ("ode",)))


_register()
