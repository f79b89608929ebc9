"""`python -m moepic_core.chat`: the command line lives in moepic_core/cli/chat.py."""
from .cli.chat import main

if __name__ == "__main__":
    raise SystemExit(main())
