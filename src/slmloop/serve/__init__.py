"""Serving: the HTTP server (OpenAI-compatible and task endpoints) and its request log."""

from slmloop import lazy_api

__all__, __getattr__ = lazy_api(
    __name__,
    {
        "serve": "server",
        "build_app": "server",
        "ServerProcess": "server",
        "create_app": "app",
        "Predictor": "engine",
    },
)
