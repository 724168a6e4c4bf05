"""The ``sdekit`` command: ``sdekit study``, ``sdekit methods``, ``sdekit sample``, ``sdekit orders``, ``sdekit train``.

Each command is one module of :mod:`sdekit._commands` with ``add_parser(sub)`` and ``run(args)``; this module
parses the line and turns errors into one line and an exit status.  It imports only the module of the command
being run, and that module imports torch and the rest inside ``run``: ``sdekit --help``, ``sdekit --version``
and ``sdekit COMMAND --help`` import none of them.

``sdekit study`` with no arguments runs the default study: the 2-D Gaussian mixture under the VP SDE with
its exact score, reverse-SDE samplers of torchsde and sdekit and probability-flow solvers of torchdiffeq and
sdekit over a range of budgets.  It writes the results (JSON lines, resumable), a summary with a verdict per
row, the fitted orders and the plots into ``--out``, and prints the summary.

The built-in problems are made of :mod:`sdekit.validation` and live beside the core in ``sdekit.studies``;
this module imports that lazily, inside the functions that need it, so ``import sdekit`` never does.

Errors (bad arguments, a bad TOML file, an unknown method, a ``module:attr`` that is not there) print one
line naming the fix and exit with status 2; a failure while running exits with 1, an interrupt with 130.
"""

import sys
from typing import List, Optional

from . import __version__
from ._commands import COMMANDS, load
from ._commands._common import UsageError, _Parser, _one_line
from ._errors import InvalidParameterError, SDEKitError

__all__ = ["main", "build_parser", "COMMANDS"]


def build_parser(command: Optional[str] = "*"):
    """The ``sdekit`` argument parser, one sub-command per entry of :data:`COMMANDS`: every one built in full
    (``"*"``), or only ``command`` (its module imported; ``None``: none), the others listed by name and help."""
    parser = _Parser(prog="sdekit", description="sdekit: convergence studies and solver comparisons for "
                                                "score-based SDEs.")
    parser.add_argument("--version", action="version", version=f"sdekit {__version__}", help="print sdekit's version and exit")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}", parser_class=_Parser)
    for name, line in COMMANDS.items():
        if command in ("*", name):
            load(name).add_parser(sub)
        else:
            sub.add_parser(name, help=line, add_help=False)
    return parser


def _command(argv: List[str]) -> Optional[str]:
    """The sub-command ``argv`` names: its first word that is not an option (``sdekit`` itself takes none with a
    value), or ``None``."""
    word = next((a for a in argv if not a.startswith("-")), None)
    return word if word in COMMANDS else None


def main(argv: Optional[List[str]] = None) -> int:
    """Run the ``sdekit`` command; returns the exit status (0 ok, 1 failure or --strict, 2 usage, 130 interrupt)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--"]:                       # `torchrun ... -m sdekit -- sample ...` run by hand
        argv = argv[1:]
    command = _command(argv)
    try:
        parser = build_parser(command)
        args = parser.parse_args(argv)
        if getattr(args, "run", None) is None:
            parser.print_help()
            return 2
        return args.run(args)
    except UsageError as err:
        text = str(err)
        if command and text.endswith("(see sdekit --help)"):
            text = text.replace("(see sdekit --help)", f"(see sdekit {command} --help)")
        print(f"sdekit: error: {_one_line(text)}", file=sys.stderr)
        return 2
    except BrokenPipeError:                      # `sdekit methods | head`: the reader has gone
        sys.stderr.close()
        return 0
    except (SDEKitError, OSError) as err:
        print(f"sdekit: error: {_one_line(err)}", file=sys.stderr)
        return 2 if isinstance(err, (InvalidParameterError, ValueError, TypeError)) else 1
    except KeyboardInterrupt:
        print("sdekit: interrupted; finished rows are saved, run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
