"""The ``moesched`` commands of the torch side (``profile``, ``validate``): each module has
``HELP``, ``add_arguments(parser)`` and ``run(args) -> int`` like :mod:`moesched.commands`,
and is registered in pyproject.toml under the entry-point group ``moesched.commands``, which
:mod:`moesched.cli` reads. The modules import torch only when a command needs it."""
