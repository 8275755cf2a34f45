"""Training: the LoRA SFT recipe (setup → build → preflight → fit → save), batching, checkpoints, preflight."""

from slmloop import lazy_api

__all__, __getattr__ = lazy_api(
    __name__,
    {
        "train": "recipe",
        "setup": "recipe",
        "build": "recipe",
        "Forecast": "preflight",
        "render_forecast": "preflight",
    },
)
