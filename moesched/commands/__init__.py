"""One module per CLI subcommand (see moesched.cli)."""
