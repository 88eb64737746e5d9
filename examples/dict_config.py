"""logging.config.dictConfig: the handler built with ``"()"``, settings as keys, no secrets.

    python examples/dict_config.py

The API key comes from INTERAKT_API_KEY because the config gives none (keep keys out of config
files). Any InteraktHandler keyword can be a key next to ``"()"``: here ``workers``, ``level``.
"""

from __future__ import annotations

import logging
import logging.config

from _common import interakt_target

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(levelname)s %(name)s: %(message)s"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain"},
        "interakt": {
            "()": "interakt_logging.InteraktHandler",
            "level": "INFO",
            "workers": 4,
            "shutdown_timeout": 5.0,
        },
    },
    "root": {"level": "INFO", "handlers": ["console", "interakt"]},
}


def main() -> None:
    logging.config.dictConfig(LOGGING)
    log = logging.getLogger("shop")
    log.info("Signed Up", extra={"interakt_user": {"user_id": "7", "traits": {"plan": "free"}}})
    log.info("Trial Started", extra={"interakt_event": {"user_id": "7", "traits": {"days": 14}}})
    logging.shutdown()


if __name__ == "__main__":
    with interakt_target():
        main()
