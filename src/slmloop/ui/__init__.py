"""The web dashboard (``slmloop ui``): every stage of the loop in a browser, with promote and rollback."""

from slmloop import lazy_api

__all__, __getattr__ = lazy_api(
    __name__,
    {
        "create_ui_app": "app",
    },
)
