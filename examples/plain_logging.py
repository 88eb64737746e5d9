"""Plain logging: an InteraktHandler on the root logger, tags passed with ``extra``.

    python examples/plain_logging.py

Without INTERAKT_API_KEY it sends to a loopback mock and prints what that received.
"""

from __future__ import annotations

import logging

from _common import interakt_target

from interakt_logging import InteraktHandler


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().addHandler(InteraktHandler())  # key (and host) from the environment
    log = logging.getLogger("shop")

    log.info("Signed Up", extra={"interakt_user": {
        "user_id": "42", "phone_number": "9999999999", "country_code": "+91",
        "traits": {"name": "John", "plan": "pro"},
    }})
    log.info("Order Placed", extra={"interakt_event": {
        "user_id": "42", "traits": {"orderNumber": "CUS001", "total": 499.0},
    }})
    log.info("an ordinary log line: not sent to Interakt")
    logging.shutdown()  # flush and close every handler: delivers what is queued


if __name__ == "__main__":
    with interakt_target():
        main()
