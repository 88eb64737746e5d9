"""Django: the LOGGING part of settings.py.

Copy ``LOGGING`` into your settings module. Django hands it to ``logging.config.dictConfig``, so
the handler is built with ``"()"`` and takes its key from INTERAKT_API_KEY: no secret in
settings.py. Views then log as usual::

    logger = logging.getLogger("shop")
    logger.info("Order Placed", extra={"interakt_event": {"user_id": request.user.pk,
                                                          "traits": {"total": order.total}}})

Run this file to see the configuration work without Django (it calls dictConfig as Django does):

    python examples/django_settings.py
"""

from __future__ import annotations

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {
        "console": {"class": "logging.StreamHandler"},
        "interakt": {
            "()": "interakt_logging.InteraktHandler",
            "level": "INFO",
            # every InteraktHandler keyword works here, e.g. "shutdown_timeout": 5.0,
            # "outbox": "/var/lib/myapp/interakt-outbox.sqlite3"
        },
    },
    "loggers": {
        "shop": {"handlers": ["console", "interakt"], "level": "INFO", "propagate": False},
    },
}


if __name__ == "__main__":
    import logging
    import logging.config

    from _common import interakt_target

    with interakt_target():
        logging.config.dictConfig(LOGGING)
        logging.getLogger("shop").info("Order Placed", extra={"interakt_event": {
            "user_id": 5, "traits": {"total": 250, "items": ["tea", "cups"]},
        }})
        logging.shutdown()
