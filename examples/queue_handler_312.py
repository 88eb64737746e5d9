"""Python 3.12+: dictConfig's queue-handler form, the standard library's QueueHandler in front.

    python3.12 examples/queue_handler_312.py

Some applications put every handler behind one ``logging.handlers.QueueHandler``; since 3.12
dictConfig builds that with ``"handlers"`` naming the handlers behind it, and the application
starts and stops its listener. InteraktHandler works behind it unchanged. (It is a QueueHandler
itself, so without such a policy the plain ``"()"`` form is the same non-blocking call with one
queue and one thread fewer.)
"""

from __future__ import annotations

import logging
import logging.config
import sys

from _common import interakt_target

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {
        "interakt": {"()": "interakt_logging.InteraktHandler", "level": "INFO"},
        "queue": {
            "class": "logging.handlers.QueueHandler",
            "handlers": ["interakt"],
            "respect_handler_level": True,
        },
    },
    "root": {"level": "INFO", "handlers": ["queue"]},
}


def main() -> None:
    logging.config.dictConfig(LOGGING)
    queue_handler = logging.getHandlerByName("queue")
    queue_handler.listener.start()
    try:
        log = logging.getLogger("shop")
        log.info("Order Placed", extra={"interakt_event": {
            "user_id": "42", "traits": {"orderNumber": "CUS003"},
        }})
        log.info("Signed Up", extra={"interakt_user": {"user_id": "42"}})
    finally:
        queue_handler.listener.stop()  # hands the records still queued to InteraktHandler
    logging.shutdown()


if __name__ == "__main__":
    if sys.version_info < (3, 12):
        sys.exit("this example needs Python 3.12 or later")
    with interakt_target():
        main()
