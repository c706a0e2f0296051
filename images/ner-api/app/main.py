"""Entry module for `python3 -m uvicorn main:app` (working directory /app)."""

from ner11_api.api import app  # noqa: F401
