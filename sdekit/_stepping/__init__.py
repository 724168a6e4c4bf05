"""sdekit's own stepping layer: one loop (:func:`run`), small steppers, frames, keyed noise.

Each stepper is one small module; :data:`STEPPERS` lists them in the order ``sdekit.methods()`` shows, and
:data:`ADAPTIVE_STEPPERS` the adaptive ones, integrated by :func:`run_adaptive` with a step size per sample.
"""

from ._ddim import DDIM, EulerAncestral
from ._deis import DEIS
from ._dpm_solver import DPMSolver2, DPMSolver3, DPMSolverFast, DPMSolverPP2S
from ._dpmpp_multistep import DPMSolverPP2M, DPMSolverPP3M
from ._dpmpp_sde import DPMSolverPP2MSDE, DPMSolverPPSDE
from ._edm import EDMHeun, EDMStochastic
from ._frame import Frame
from ._ipndm import IPNDM
from ._lms import LMS
from ._loop import run
from ._pc import PredictorCorrector
from ._restart import Restart
from ._stepper import Stepper
from ._unipc import UniPC
from ._adaptive import SYNC_EVERY, run_adaptive
from ._dpm_adaptive import DPMSolverAdaptive
from ._improved_euler import ImprovedEuler
from ._rk import Bosh3, Dopri5
from ._stepper import AdaptiveStepper

STEPPERS = (DDIM, DPMSolver2, DPMSolver3, DPMSolverFast, DPMSolverPP2S, DPMSolverPP2M, DPMSolverPP3M, UniPC, EDMHeun,
            LMS, IPNDM, DEIS, EulerAncestral, DPMSolverPP2MSDE, DPMSolverPPSDE, EDMStochastic, Restart,
            PredictorCorrector)
ADAPTIVE_STEPPERS = (Bosh3, Dopri5, DPMSolverAdaptive, ImprovedEuler)


__all__ = ["run", "run_adaptive", "Stepper", "AdaptiveStepper", "Frame", "STEPPERS", "ADAPTIVE_STEPPERS",
           "SYNC_EVERY"]
