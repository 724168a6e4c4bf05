"""The one family of errors that sdekit raises.

Every error is an :class:`SDEKitError` and also a ``ValueError`` or ``TypeError``,
so ``except ValueError`` in user code keeps working.  Messages are one line and
say what to do; a misspelt name gets the closest valid ones (:func:`did_you_mean`).
"""

import difflib
import re
from typing import Iterable, List


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


def _squash(name: str) -> str:
    """``name`` lower-cased without punctuation, ``+`` read as ``p`` (``"DPM++ 2M"`` -> ``"dpmpp2m"``)."""
    return re.sub(r"[^0-9a-z]", "", name.lower().replace("+", "p"))


def close_names(word: str, names: Iterable[str], n: int = 3) -> List[str]:
    """The names closest to a misspelt ``word``: spelt alike (any case), or alike with punctuation removed.

    ``difflib.get_close_matches`` on the lower-cased names, then on the squashed ones (``"dpm++2m"`` finds
    ``"dpmpp_2m"``, ``"euler-ancestral"`` finds ``"euler_ancestral"``); a name equal to ``word`` once both are
    squashed is the only answer; otherwise at most ``n``.
    """
    names = list(dict.fromkeys(str(x) for x in names))
    word = str(word)
    found = [x for x in names if _squash(x) == _squash(word) and _squash(word)]
    if found:   # the same name but for case and punctuation: nothing else is as close
        return found[:n]
    by_lower = {x.lower(): x for x in reversed(names)}       # reversed: the first name of each spelling wins
    found += [by_lower[x] for x in difflib.get_close_matches(word.lower(), list(by_lower), n=n, cutoff=0.7)]
    by_squash = {_squash(x): x for x in reversed(names)}
    found += [by_squash[x] for x in difflib.get_close_matches(_squash(word), list(by_squash), n=n, cutoff=0.75)]
    return list(dict.fromkeys(found))[:n]


def did_you_mean(word, names) -> str:
    """`` (did you mean 'a' or 'b'?)`` for the names close to ``word``, or ``""``."""
    hint = close_names(word, names) if isinstance(word, str) else []
    return f" (did you mean {' or '.join(map(repr, hint))}?)" if hint else ""


def unknown_options_message(method_name: str, unknown, takes, renamed=None) -> str:
    """One line: the options ``method_name`` does not take, the new name of each renamed one (``renamed``:
    ``{old: new}``) or a close match for each misspelt one, and every option it takes (``takes``, the loop's own
    included), last."""
    takes, renamed = tuple(takes), renamed or {}
    said = ", ".join(f"{k!r} (now {renamed[k]!r})" if k in renamed else f"{k!r}{did_you_mean(k, takes)}"
                     for k in unknown)
    return f"{method_name} does not take option(s) {said}; it takes: {', '.join(takes) or 'none'}"

