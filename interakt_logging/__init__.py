"""interakt-logging: send Interakt Track API user and event calls by logging."""

from ._backlog import FlushResult
from ._errors import APIError, DeliveryError, InteraktError, QueueFullError, ValidationError
from ._handler import InteraktHandler
from ._redact import RedactTags
from ._structlog import InteraktProcessor
from ._version import __version__

__all__ = [
    "APIError",
    "DeliveryError",
    "FlushResult",
    "InteraktError",
    "InteraktHandler",
    "InteraktProcessor",
    "QueueFullError",
    "RedactTags",
    "ValidationError",
    "__version__",
]
