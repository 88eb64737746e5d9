"""interakt-logging: send Interakt Track API user and event calls by logging."""

from ._backlog import FlushResult
from ._errors import APIError, DeliveryError, InteraktError, QueueFullError, ValidationError
from ._handler import InteraktHandler, Submitted
from ._payload import EVENTS_PATH, USERS_PATH
from ._redact import RedactTags
from ._structlog import InteraktProcessor
from ._version import __version__

__all__ = [
    "EVENTS_PATH",
    "USERS_PATH",
    "APIError",
    "DeliveryError",
    "FlushResult",
    "InteraktError",
    "InteraktHandler",
    "InteraktProcessor",
    "QueueFullError",
    "RedactTags",
    "Submitted",
    "ValidationError",
    "__version__",
]
