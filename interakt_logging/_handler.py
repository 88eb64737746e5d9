"""InteraktHandler: the logging.Handler that turns tagged records into Track API calls."""

from __future__ import annotations

import logging
import logging.handlers
import os
import threading
import time
from collections.abc import Mapping
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

from . import _exit_paths
from ._backlog import FlushResult
from ._errors import (
    APIError,
    DeliveryError,
    InteraktError,
    ValidationError,
    _raised,
    internal_error,
)
from ._misspelt import FORMATTED_RECORD_SIZE, PLAIN_RECORD_SIZE, check_extras
from ._payload import (
    EVENT_TAG,
    EVENTS_PATH,
    USER_TAG,
    USERS_PATH,
    Payload,
    QueuedPayload,
    payload_from_tag,
)
from ._pipeline import Pipeline, capturing
from ._redact import original, redact
from ._settings import (
    API_KEY_ENV,
    CAPTURE_PLACEHOLDER_KEY,
    ErrorCallback,
    make_settings,
    no_key_error,
)

_logger = logging.getLogger("interakt_logging")


class Submitted(NamedTuple):
    """What ``InteraktHandler.submit`` did with one call."""

    path: str
    """USERS_PATH or EVENTS_PATH."""
    body: bytes
    """The JSON body as validated and queued; the sender adds ``createdAt``."""
    created: float
    """The time sent as ``createdAt`` (epoch seconds)."""
    accepted: bool
    """True when the call was taken: queued for the sender, or (sync mode) answered with a 2xx.
    False when it was refused (a full queue, a close under way, no API key) and reported."""
    answer: Any = None
    """Sync mode: the API's JSON answer."""


_REFUSED: Any = object()  # what a dispatcher returns for a payload it refused (and reported)
_new_tuple = tuple.__new__  # builds a Submitted without its Python-level __new__: ~100 ns a call


class InteraktHandler(logging.handlers.QueueHandler):
    """Sends records tagged ``interakt_user`` / ``interakt_event`` to Interakt's Track API.

    Tagged records are validated and serialized on the calling thread, then queued for a
    background listener that posts them with retries; untagged records cost two dict lookups.
    The logging call never raises and never blocks (unless ``block_on_full``): problems go to
    ``on_error(error, payload)`` and to one warning per distinct problem on the
    ``interakt_logging`` logger.
    """

    def __init__(
        self,
        _dictconfig_queue: Any = None,
        *,
        api_key: Optional[str] = None,
        host: Optional[str] = None,
        sync_mode: bool = False,
        debug: bool = False,
        timeout: float = 10,
        max_retries: int = 3,
        max_queue_size: int = 10000,
        on_error: Optional[ErrorCallback] = None,
        workers: int = 32,
        batch_size: int = 100,
        shutdown_timeout: float = 5.0,
        block_on_full: bool = False,
        block_timeout: float = 1.0,
        rate_limit: Optional[float] = None,
        rate_limit_store: Optional[str] = None,
        outbox: Optional[str | os.PathLike[str]] = None,
        outbox_max_bytes: int = 64 * 1024 * 1024,
        level: int | str = logging.NOTSET,
    ) -> None:
        # Python 3.12+ dictConfig hands every QueueHandler subclass configured with "class" a
        # queue (and later a plain listener); this handler owns its bounded queue and its
        # sending listener, so both are set aside (see the ``listener`` property).
        del _dictconfig_queue
        logging.Handler.__init__(self, level)
        if api_key is None and os.environ.get(API_KEY_ENV) is None and capturing():
            api_key = CAPTURE_PLACEHOLDER_KEY  # testing.capture() sends nothing: no key needed
        self.settings = make_settings(
            api_key=api_key, host=host, sync_mode=sync_mode, debug=debug, timeout=timeout,
            max_retries=max_retries, max_queue_size=max_queue_size, on_error=on_error,
            workers=workers, batch_size=batch_size, shutdown_timeout=shutdown_timeout,
            block_on_full=block_on_full, block_timeout=block_timeout, rate_limit=rate_limit,
            rate_limit_store=rate_limit_store,
            outbox=outbox, outbox_max_bytes=outbox_max_bytes,
        )
        self.pipeline = Pipeline(self.settings)
        _exit_paths.install()  # SIGTERM's default action would skip the exit drain
        if self.settings.api_key is None:
            # Like Sentry without a DSN: the app (and every manage.py command) starts; what
            # would have been sent is reported, so the missing key cannot go unnoticed.
            _logger.warning(
                "interakt-logging: no API key: set %s (or pass api_key=); tagged records are "
                "reported to on_error as failed and not sent", API_KEY_ENV,
            )
        # re-entrant: a signal handler that logs may interrupt this thread while it reopens
        self._reopen_lock = threading.RLock()
        # what happens to a validated payload (queued, sent now, or refused), chosen once: it
        # runs on every tagged logging call
        self._dispatch: Callable[[QueuedPayload], Any] = self._open_dispatch()

    # QueueHandler API: the queue and the listener are the pipeline's.
    @property
    def queue(self) -> Any:
        return self.pipeline.queue

    @queue.setter
    def queue(self, value: Any) -> None:
        """Ignored: the queue is the pipeline's own, bounded and rebuilt after a fork."""

    @property
    def listener(self) -> Any:
        """For the Python 3.12+ queue-handler recipe (``handler.listener.start()``, and
        ``.stop()`` at exit): start is a no-op, stop delivers what is queued and closes."""
        return _ListenerStandIn(self)

    @listener.setter
    def listener(self, value: Any) -> None:
        """Ignored: dictConfig's plain QueueListener would consume payloads, not send them."""

    def __repr__(self) -> str:
        if _pipeline_of(self) is None:
            return "<InteraktHandler (construction failed)>"
        level = logging.getLevelName(self.level)
        mode = "sync" if self.settings.sync_mode else "background"
        return f"<InteraktHandler {self.settings.host} {mode} ({level})>"

    # -- the hot path ---------------------------------------------------------------------------

    def handle(self, record: logging.LogRecord) -> Any:
        """Untagged records return at once: no formatting, no copying, no lock. A record
        logged without ``extra=`` is told by its size alone."""
        d = record.__dict__
        size = len(d)
        if size <= PLAIN_RECORD_SIZE:  # logged without extra=: no tag can be there
            return False
        if EVENT_TAG not in d and USER_TAG not in d:
            # a misspelt tag, perhaps; unless all that was added is a formatter's output
            if size > FORMATTED_RECORD_SIZE or "message" not in d or (
                size == FORMATTED_RECORD_SIZE and "asctime" not in d
            ):
                check_extras(d)
            return False
        if self.filters:
            rv = self.filter(record)
            if not rv:
                return False
            if isinstance(rv, logging.LogRecord):
                record = rv
        self.emit(record)
        return record

    def emit(self, record: logging.LogRecord) -> None:
        """Send the record's tag, then leave other handlers a summary in its place (see
        ``_redact``). A failure is reported once, as from every door (counted, ``on_error``, a
        warning), never also through logging's ``handleError``: its "--- Logging error ---"
        would tell it twice, with the record's message and arguments."""
        d = record.__dict__
        outcome = "sent"
        try:
            try:
                payload = self.prepare(record)
            except ValidationError as exc:
                outcome = "refused"
                self.pipeline.report_unsent(exc, original(d.get(EVENT_TAG, d.get(USER_TAG))))
                return
            result = self._dispatch(payload)
            if result is False or result is _REFUSED:  # dropped (a full queue) or no API key
                outcome = "not sent"
        except Exception as exc:  # a log call never raises
            outcome = "not sent"
            self._fault(record, exc)
        finally:
            redact(d, outcome)

    def _fault(self, record: logging.LogRecord, error: Exception) -> None:
        """A record that did not go: in sync mode the API's refusal or a network failure,
        reported already by ``_send_now``; otherwise a bug (or a failing part), reported with
        its tag like any failed payload, its traceback on the library's logger. Only a handler
        whose construction failed has no reporter to tell: logging's ``handleError`` does."""
        pipeline = _pipeline_of(self)
        if pipeline is None:
            self.handleError(record)
            return
        d = record.__dict__
        self._report_fault(error, original(d.get(EVENT_TAG, d.get(USER_TAG))), "a log record")

    def _report_fault(self, error: Exception, tag: Any, doing: str) -> Optional[DeliveryError]:
        """Report what ``_dispatch`` raised, unless ``_send_now`` has (in sync mode, what
        ``pipeline.send`` raises): anything else, a bug or a failing part (a reopen that
        cannot rebuild the pipeline), is reported with the tag as an internal DeliveryError,
        which is returned. None when it was reported already."""
        if self.settings.sync_mode and isinstance(error, (APIError, DeliveryError)):
            return None
        fault = internal_error(error, f"handling {doing}")
        self.pipeline.report_unsent(fault, tag)
        return fault

    def prepare(self, record: logging.LogRecord) -> QueuedPayload:
        """Build the payload of a tagged record; raises ValidationError for bad input."""
        path, tag = path_and_tag(record.__dict__)
        default_event = None
        if names_no_event(path, tag):
            msg = record.msg  # a str without args is its own message: skip getMessage()
            default_event = (
                msg if type(msg) is str and not record.args else _message_as_event(record)
            )
        return payload_from_tag(path, tag, default_event, record.created)

    def _open_dispatch(self) -> Callable[[QueuedPayload], Any]:
        if self.settings.api_key is None:
            return self._refuse_without_key
        return self._send_now if self.settings.sync_mode else self.pipeline.submit

    def _reopen(self, payload: QueuedPayload) -> Any:
        """A record after close(): a later dictConfig (uvicorn's, Django's) closes every handler
        it replaces, though a logger may go on using it. Start a fresh pipeline, as a stdlib
        FileHandler reopens its file."""
        with self._reopen_lock:
            if self._dispatch == self._reopen:
                self.pipeline = Pipeline(self.settings)
                self._dispatch = self._open_dispatch()
        return self._dispatch(payload)

    def _refuse_without_key(self, payload: QueuedPayload) -> Any:
        if capturing():  # testing.capture() needs no key
            return self._send_now(payload) if self.settings.sync_mode else (
                self.pipeline.submit(payload)
            )
        self.pipeline.report_unsent(no_key_error(), Payload(*payload).on_error_arg())
        return _REFUSED

    def _send_now(self, payload: QueuedPayload) -> Any:
        """Sync mode: the API's answer; a failure is reported (counted, on_error, a warning)
        and raised."""
        try:
            return self.pipeline.send(payload)
        except InteraktError as exc:
            self.pipeline.reporter.report(exc, Payload(*payload).on_error_arg())
            raise

    # -- the door for everything that is not a log record -----------------------------------------

    def submit(
        self,
        path: str,
        tag: Any,
        *,
        default_event: Optional[str] = None,
        created: Optional[float] = None,
    ) -> Submitted:
        """Make the Track API call ``path`` (``USERS_PATH`` or ``EVENTS_PATH``) with ``tag``, a
        dict as a record's ``interakt_user`` / ``interakt_event`` tag holds, as a tagged record
        would: validated here, then queued (or, in sync mode, sent now). ``default_event`` names
        an event whose tag has no ``event``; ``created`` is when it happened (epoch seconds,
        default now; the tag's ``created_at`` wins). The structlog processor, the ``track``
        module and the command line call this.

        Every failure is reported as a log record's is (counted in ``stats()``, passed to
        ``on_error``, warned about) and then raised here: ValidationError for bad input, and in
        sync mode APIError / DeliveryError. A payload refused without raising (a full queue, a
        close under way, no API key, in background mode a fault while queueing it) returns
        ``accepted=False``.
        """
        try:
            payload = payload_from_tag(
                path, tag, default_event, time.time() if created is None else created
            )
        except ValidationError as exc:
            self.pipeline.report_unsent(exc, tag)
            raise
        try:
            outcome = self._dispatch(payload)
        except Exception as exc:
            fault = self._report_fault(exc, tag, "a submitted call")
            if fault is None:
                raise  # sync mode: the API's refusal or a network failure, reported
            if self.settings.sync_mode:
                raise fault from exc
            return _new_tuple(Submitted, (*payload, False, None))
        if outcome is _REFUSED or not self.settings.sync_mode:
            return _new_tuple(Submitted, (*payload, outcome is True, None))
        return _new_tuple(Submitted, (*payload, True, outcome))

    # -- life cycle -------------------------------------------------------------------------------

    def flush(self, timeout: Optional[float] = None) -> FlushResult:  # type: ignore[override]
        """Wait until everything queued before the call is delivered or failed, at most
        ``timeout`` seconds (default ``shutdown_timeout``). The result counts what was queued
        since the previous flush (``delivered``, ``failed``, ``pending``) and is true only when
        all of it was delivered. Under logging's module lock (a configuration call replacing
        handlers) it does not wait: see ``close``."""
        pipeline = _pipeline_of(self)
        if pipeline is None:
            return FlushResult()
        return pipeline.flush(0 if _holding_logging_lock() else timeout)

    def close(self, timeout: Optional[float] = None) -> None:
        """Deliver what is queued and stop; report (or keep in the outbox) what is left.
        ``timeout`` is a hard bound; without it, the close goes on while payloads are being
        delivered and gives up after ``shutdown_timeout`` without any. Idempotent; a record
        handled later starts a fresh pipeline (see ``_reopen``).

        Called by dictConfig or fileConfig replacing their handlers (they hold logging's module
        lock meanwhile), it does not wait: a sender thread that logs needs that lock, so the
        wait would only run out its time. The pipeline goes on for the loggers that still use
        this handler, and the exit drain ends it."""
        if _holding_logging_lock():
            logging.Handler.close(self)
            return
        pipeline = _pipeline_of(self)
        try:
            if pipeline is not None:
                pipeline.close(timeout)
        finally:
            self._dispatch = self._reopen
            logging.Handler.close(self)

    def stats(self) -> Dict[str, Any]:
        """Counters (enqueued, sent, retried, failed, dropped, outboxed), queue depth, requests
        in flight and circuit state. Cheap and thread-safe."""
        return self.pipeline.stats()


class _ListenerStandIn:
    """What ``handler.listener`` returns in place of a QueueListener, for dictConfig users. The
    sender starts on first use (never in a pre-fork master that logged nothing), so ``start``
    has nothing to do; ``stop`` must not merely stop draining the queue, which would leave
    payloads behind, so it closes."""

    def __init__(self, handler: InteraktHandler) -> None:
        self._handler = handler

    def start(self) -> None:
        """Nothing to do: the sender starts on first use."""

    def stop(self) -> None:
        self._handler.close()


def _pipeline_of(handler: InteraktHandler) -> Optional[Pipeline]:
    """None for a handler whose construction failed after ``logging.Handler.__init__`` had
    registered it (a bad setting; dictConfig's "Unable to configure handler"): logging still
    flushes and closes it at exit, and that must pass quietly."""
    pipeline: Optional[Pipeline] = handler.__dict__.get("pipeline")
    return pipeline


def _holding_logging_lock() -> bool:
    """Whether this thread holds the logging module's lock (private, but the only way to know
    that a configuration call is closing us; an RLock's ``_is_owned`` is what Condition uses)."""
    is_owned = getattr(getattr(logging, "_lock", None), "_is_owned", None)
    return bool(is_owned is not None and is_owned())


def path_and_tag(d: Mapping[str, Any]) -> Tuple[str, Any]:
    """The API path and the tag as logged (see ``_redact``) of a tagged mapping: a record's
    ``__dict__`` or a structlog event dict; ValidationError when it holds both tags."""
    if EVENT_TAG in d:
        if USER_TAG in d:
            raise ValidationError(
                USER_TAG, "both interakt_user and interakt_event",
                "one tag per record: log the user and the event as two records",
            )
        return EVENTS_PATH, original(d[EVENT_TAG])
    return USERS_PATH, original(d[USER_TAG])


def names_no_event(path: str, tag: Any) -> bool:
    """An event tag without its own ``event``: the record's message (or the structlog event)
    names it. Asked before the tag is validated, so only a plain dict is looked into."""
    return path == EVENTS_PATH and not (type(tag) is dict and "event" in tag)


def _message_as_event(record: logging.LogRecord) -> str:
    """The record's message, the event's default name; a message that cannot be formatted (a
    ``%d`` given a str, a ``__str__`` that raises) is bad input like any other."""
    try:
        return record.getMessage()
    except Exception as exc:
        raise ValidationError(
            "event", record.msg,
            f"an event name, or a log message that can be formatted ({_raised(exc)})",
        ) from None
