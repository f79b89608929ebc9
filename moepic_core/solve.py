"""`python -m moepic_core.solve`: the command line lives in moepic_core/cli/solve.py."""
from .cli.solve import main

if __name__ == "__main__":
    raise SystemExit(main())
