"""Analysis: failure clusters, slices, disputed labels, remediation plans, and comparisons of models."""

from slmloop import lazy_api

__all__, __getattr__ = lazy_api(
    __name__,
    {
        "analyze": "failures",
        "export_for_labelling": "failures",
        "compare_models": "compare",
    },
)
