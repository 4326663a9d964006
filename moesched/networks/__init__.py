"""The shipped network presets (``*.json``, :mod:`moesched.network`)."""
