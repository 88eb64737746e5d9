"""logging.config.fileConfig with an INI file: ``class=interakt_logging.InteraktHandler`` and its
settings as ``kwargs=`` (see logging.ini next to this script).

    python examples/file_config.py
"""

from __future__ import annotations

import logging
import logging.config
import pathlib

from _common import interakt_target

INI = pathlib.Path(__file__).with_name("logging.ini")


def main() -> None:
    logging.config.fileConfig(INI, disable_existing_loggers=False)
    log = logging.getLogger("billing")
    log.info("Invoice Paid", extra={"interakt_event": {
        "user_id": 1001, "traits": {"invoice": "INV-9", "amount": 1200},
    }})
    log.info("Billing Updated", extra={"interakt_user": {
        "phone_number": "9876543210", "traits": {"gst": True},
    }})
    logging.shutdown()


if __name__ == "__main__":
    with interakt_target():
        main()
