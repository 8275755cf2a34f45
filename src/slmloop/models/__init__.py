"""Models: the catalog (bundled, hub, local), loading, batched inference, embeddings, OpenAI-compatible endpoints."""

from slmloop import lazy_api

__all__, __getattr__ = lazy_api(
    __name__,
    {
        "resolve_model": "catalog",
        "load_causal_lm": "loading",
        "load_tokenizer": "loading",
        "generate": "inference",
        "rank_labels": "inference",
        "embed": "embedder",
        "Endpoint": "endpoint",
    },
)
