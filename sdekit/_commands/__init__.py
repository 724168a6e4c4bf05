"""The ``sdekit`` command's sub-commands, one module each: ``add_parser(sub)`` and ``run(args)``.

:data:`COMMANDS` names them with their one-line help, so that ``sdekit --help`` lists them without importing
any (nor torch): :mod:`sdekit.cli` imports only the module of the command being run.
"""

import importlib

#: The commands, in the order ``sdekit --help`` lists them, with the line it shows for each.
COMMANDS = {
    "study": "run a convergence study / solver comparison (default: the 2-D mixture)",
    "methods": "list the registered methods, or show one (sdekit methods NAME)",
    "sample": "draw samples with one method (one process or torchrun) and save them",
    "orders": "measure every method's order (the table of docs/orders.md)",
    "train": "train a small score network (the 2-D mixture, the digits, or your points)",
}


def load(name: str):
    """The module of command ``name`` (imported on first use)."""
    return importlib.import_module(f"{__name__}.{name}")
