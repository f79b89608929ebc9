"""Command lines: `python -m moepic_core.chat|solve|simulate` (the shims beside this package call
these modules' `main`); `cli_args` holds the flags solve and simulate share."""
