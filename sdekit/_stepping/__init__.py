"""sdekit's own stepping layer: one driver (:func:`run`), one controller module, small steppers, the model they
step (its predictions and coefficients), keyed noise.

Each stepper is one small module; :data:`STEPPERS` lists the fixed-step ones in the order ``sdekit.methods()``
shows, and :data:`ADAPTIVE_STEPPERS` the adaptive ones (a step size per sample).  Adding a sampler is adding its
module and its name to one of the two tuples (CONTRIBUTING.md).
"""

from ._ddim import DDIM, EulerAncestral
from ._deis import DEIS
from ._dpm_adaptive import DPMSolverAdaptive
from ._dpm_solver import DPMSolver2, DPMSolver3, DPMSolverFast, DPMSolverPP2S
from ._dpmpp_multistep import DPMSolverPP2M, DPMSolverPP3M
from ._dpmpp_sde import DPMSolverPP2MSDE, DPMSolverPPSDE
from ._driver import SYNC_EVERY, run, walk
from ._edm import EDMHeun, EDMStochastic
from ._model import Coef, Model
from ._improved_euler import ImprovedEuler
from ._ipndm import IPNDM
from ._lms import LMS
from ._pc import PredictorCorrector
from ._restart import Restart
from ._rk import Bosh3, Dopri5
from ._stepper import AdaptiveStepper, Stepper
from ._unipc import UniPC

STEPPERS = (DDIM, DPMSolver2, DPMSolver3, DPMSolverFast, DPMSolverPP2S, DPMSolverPP2M, DPMSolverPP3M, UniPC, EDMHeun,
            LMS, IPNDM, DEIS, EulerAncestral, DPMSolverPP2MSDE, DPMSolverPPSDE, EDMStochastic, Restart,
            PredictorCorrector)
ADAPTIVE_STEPPERS = (Bosh3, Dopri5, DPMSolverAdaptive, ImprovedEuler)


__all__ = ["run", "walk", "Stepper", "AdaptiveStepper", "Model", "Coef", "STEPPERS", "ADAPTIVE_STEPPERS", "SYNC_EVERY"]
