"""The OpenAI-compatible ASGI app (FastAPI) that service.py mounts at the server root.

The code lives in ``gptoss/api/``; this file is the design card's entry point.
"""

from gptoss.api.app import app

__all__ = ["app"]
