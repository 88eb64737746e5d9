"""structlog, native: InteraktProcessor in the processor chain.

    python examples/structlog_native.py

It needs structlog: ``pip install "interakt-logging[structlog]"``.

The processor sends tagged event dicts through the handler's queue and sender, takes the
``interakt_*`` key out (so phone numbers and traits stay out of your log output) and passes the
rest on to the renderer. ``createdAt`` is the TimeStamper's time.
"""

from __future__ import annotations

import structlog
from _common import interakt_target

from interakt_logging import InteraktHandler, InteraktProcessor


def main() -> None:
    handler = InteraktHandler()  # not attached to any logger: it is the processor's sender
    structlog.configure(processors=[
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso"),
        InteraktProcessor(handler),
        structlog.processors.JSONRenderer(),
    ])
    log = structlog.get_logger().bind(request_id="r-17")
    log.info("Signed Up", interakt_user={"user_id": "42", "traits": {"name": "John"}})
    log.info("Order Placed", interakt_event={"user_id": "42", "traits": {"orderNumber": "CUS001"}})
    log.info("no tag, only logged")
    handler.close()  # delivers what is queued (bounded by shutdown_timeout)


if __name__ == "__main__":
    with interakt_target():
        main()
