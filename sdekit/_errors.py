"""The one family of errors that sdekit raises.

Every error is an :class:`SDEKitError` and also a ``ValueError`` or ``TypeError``,
so ``except ValueError`` in user code keeps working.  Messages are one line and
say what to do.
"""


class SDEKitError(Exception):
    """Base class of every error raised by sdekit."""


class InvalidParameterError(SDEKitError, ValueError):
    """A parameter is out of range: an SDE coefficient, a tolerance, a time."""


class ArgumentTypeError(SDEKitError, TypeError):
    """An argument has the wrong type: not an SDE, not a tensor, not callable."""


class ShapeError(SDEKitError, ValueError):
    """A tensor has the wrong shape, dtype or device."""


class ScoreFunctionError(SDEKitError, TypeError):
    """The score function returned something that is not a tensor shaped like its input."""


class UnknownMethodError(SDEKitError, ValueError):
    """No registered method has the requested name."""


class MethodArgumentError(SDEKitError, ValueError):
    """A method got arguments it cannot use (tolerances for a fixed-step method, steps for an adaptive one)."""


class SolveError(SDEKitError, ValueError):
    """A solve did not reach its end time; ``.solution`` holds the state it did reach."""

    def __init__(self, message, solution=None):
        super().__init__(message)
        self.solution = solution
