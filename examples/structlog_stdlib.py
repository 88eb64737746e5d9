"""structlog in front of stdlib logging: the plain InteraktHandler does the sending.

    python examples/structlog_stdlib.py

It needs structlog: ``pip install "interakt-logging[structlog]"``.

``render_to_log_kwargs`` turns structlog's keyword arguments into ``extra``, so the tag arrives
on the LogRecord exactly as ``log.info(..., extra={"interakt_event": ...})`` would put it, and
an InteraktHandler on the root logger picks it up. The console renders through
``ProcessorFormatter`` with ``ExtraAdder`` (which would print the tag too, so a small processor
drops it from the rendered line). Records from plain stdlib loggers take the same way.
"""

from __future__ import annotations

import logging
from typing import Any

import structlog
from _common import interakt_target

from interakt_logging import InteraktHandler


def drop_interakt_tags(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Keep phone numbers and traits out of the console line; the handler has the record."""
    event_dict.pop("interakt_user", None)
    event_dict.pop("interakt_event", None)
    return event_dict


def main() -> None:
    console = logging.StreamHandler()
    console.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.add_log_level,
            structlog.stdlib.ExtraAdder(),
            drop_interakt_tags,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.dev.ConsoleRenderer(colors=False),
        ],
    ))
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.addHandler(console)
    root.addHandler(InteraktHandler())

    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, structlog.stdlib.render_to_log_kwargs],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
    )
    log = structlog.get_logger("shop").bind(request_id="r-18")
    log.info("Order Placed", interakt_event={"user_id": "42", "traits": {"orderNumber": "CUS002"}})
    logging.getLogger("legacy").info(
        "Signed Up", extra={"interakt_user": {"user_id": "43", "traits": {"source": "stdlib"}}}
    )
    logging.shutdown()


if __name__ == "__main__":
    with interakt_target():
        main()
