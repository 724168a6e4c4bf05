"""The ``sdekit`` command's sub-commands, one module each: ``add_parser(sub)`` and ``run(args)``."""
