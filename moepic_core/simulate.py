"""`python -m moepic_core.simulate`: the command line lives in moepic_core/cli/simulate.py."""
from .cli.simulate import main

if __name__ == "__main__":
    raise SystemExit(main())
