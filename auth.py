"""API keys: the command line for the keys file, and the key-checking middleware.

    python auth.py new-key --name alice >> keys.yaml   # a hashed entry; the key is shown once
    python auth.py --help

The code lives in ``gptoss/auth/``; this file is the design card's entry point.
"""

from gptoss.auth import AuthMiddleware, main

__all__ = ["AuthMiddleware", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
