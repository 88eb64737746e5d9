"""Process events every live pipeline must react to, and the drain that ends pipelines.

One atexit hook and one ``os.register_at_fork`` callback serve all pipelines through a WeakSet,
so creating handlers never piles up callbacks and a collected pipeline is simply skipped. The
fork hooks also suspend and hand over the open outbox files (``_outbox``'s fork functions), so
this module is the one place where process events are handled.
The atexit hook runs before ``logging.shutdown`` (registered earlier, so run later) while the
daemon sender threads are still alive, and it never starts a thread (Python 3.12+ forbids that).

``drain`` is the one way a pipeline ends, for ``close()``, the exit hook and a SIGTERM handler
(``drain_all``): it waits while payloads are being delivered, gives up after a pipeline's
``shutdown_timeout`` without any (or at an explicit deadline), and then keeps in the outbox or
reports what is left. Ctrl-C stops it and reports the rest.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from typing import IO, List, Optional, Protocol

from . import _outbox
from ._backlog import FlushMarker
from ._settings import Settings

logger = logging.getLogger("interakt_logging")

_POLL = 0.1  # seconds between looks at the pipelines being drained
PROGRESS_AFTER = 1.0  # a drain that lasts longer than this says so on stderr
PROGRESS_EVERY_TTY = 0.25  # how often the line is redrawn on a terminal
PROGRESS_EVERY_LINES = 5.0  # how often a new line is written elsewhere (a log file)


@dataclass(frozen=True)
class Undelivered:
    """What a drain could not deliver: ``lost`` (reported to on_error) and ``kept`` (left in
    the outbox for a later process); ``out``: requests still waiting for the API's answer,
    left to their workers (a close that is not the process's last word)."""

    lost: int = 0
    kept: int = 0
    out: int = 0

    @property
    def undelivered(self) -> int:
        return self.lost + self.kept

    def __add__(self, other: Undelivered) -> Undelivered:
        return Undelivered(
            self.lost + other.lost, self.kept + other.kept, self.out + other.out
        )


class Drainable(Protocol):
    """What the drain and the fork hook need of a pipeline."""

    settings: Settings

    @property
    def finished_count(self) -> int: ...

    def pending(self) -> int: ...

    def begin_close(self) -> Optional[FlushMarker]: ...

    def end_close(self, why: str, grace: float, final: bool) -> Undelivered: ...

    def after_fork(self) -> None: ...


_pipelines: weakref.WeakSet[Drainable] = weakref.WeakSet()

ANSWER_GRACE = 0.2  # seconds requests already out get to answer once a drain gives up


def register(pipeline: Drainable) -> None:
    _pipelines.add(pipeline)


def unregister(pipeline: Drainable) -> None:
    _pipelines.discard(pipeline)


_main_thread_drains = 0  # drains under way on the main thread, where signal handlers run
_signal_after_drain: Optional[int] = None  # a signal that arrived during one, acted on after


def defer_signal_while_draining(signum: int) -> bool:
    """For a signal handler that would drain: when it interrupted a drain on the main thread,
    it must not drain again from inside it (that drain holds locks), so the signal is noted;
    once that drain ends, every pipeline is drained (that one may have been one handler's
    close) and the process dies of the signal's default action. True when deferred."""
    global _signal_after_drain
    if not _main_thread_drains:
        return False
    _signal_after_drain = signum
    return True


def die_of(signum: int) -> None:
    """End the process by ``signum``'s default action, as if no handler had been installed."""
    signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
    signal.raise_signal(signum)


STRAGGLER_WAIT = 2.0  # seconds the exit waits, in all, for threads still handing payloads over
_stragglers: weakref.WeakSet[threading.Thread] = weakref.WeakSet()


def wait_for_at_exit(thread: threading.Thread) -> None:
    """A pipeline's thread that a close could not wait for still holds payloads it will report
    (or hand over) once it runs again: the exit drain waits for it, bounded, before the process
    ends under it."""
    _stragglers.add(thread)


def _wait_for_stragglers() -> None:
    deadline = time.monotonic() + STRAGGLER_WAIT
    for thread in list(_stragglers):
        if thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))


def drain_all(reason: str = "exit") -> Undelivered:
    """Deliver what every live pipeline has queued, then end them: the exit hook, and what a
    SIGTERM handler calls before the process goes. Shows a progress line on stderr when it lasts
    over a second (``reason`` completes "delivering N queued payloads before ..."); Ctrl-C
    stops it and reports the rest. Idempotent and re-entrant: a second call, even from a signal
    handler in the middle of the first, resumes where the first stands and never reports a
    payload twice. Never raises."""
    try:
        return drain(list(_pipelines), final=True, progress=ProgressLine(reason))
    except KeyboardInterrupt:
        return Undelivered()  # drain has reported the rest and warned
    except Exception:  # pragma: no cover - a bug must not escape into the exit
        logger.exception("interakt-logging: the exit drain failed")
        return Undelivered()
    finally:
        _wait_for_stragglers()


def drain(
    pipelines: List[Drainable],
    *,
    final: bool,
    deadline: Optional[float] = None,
    progress: Optional[ProgressLine] = None,
) -> Undelivered:
    """Wait until everything the pipelines have queued is finished, then end them. Each one
    is given up ``shutdown_timeout`` seconds after its last finished payload (an API that is
    down or hangs), or at ``deadline`` (monotonic) when one is given. Requests still out then
    are reported when ``final`` (the process ends next), else left to their workers until
    the next drain. Ctrl-C ends them all at once, reporting the rest, and is raised again. Any
    other exception (``sys.exit`` from a signal handler) leaves them closing, so the exit
    drain resumes them."""
    global _main_thread_drains, _signal_after_drain
    on_main_thread = threading.current_thread() is threading.main_thread()
    if on_main_thread:
        _main_thread_drains += 1
    try:
        return _drain(pipelines, final=final, deadline=deadline, progress=progress)
    finally:
        if on_main_thread:
            _main_thread_drains -= 1
            if not _main_thread_drains and _signal_after_drain is not None:
                signum, _signal_after_drain = _signal_after_drain, None
                _drain_then_die_of(signum)


def _drain_then_die_of(signum: int) -> None:
    """What a deferred signal does once the drain it interrupted ends: drain every pipeline
    (that drain may have been one handler's close), then die of the signal."""
    try:
        drain_all(f"{signal.Signals(signum).name} ends the process")
    finally:
        die_of(signum)


def _drain(
    pipelines: List[Drainable],
    *,
    final: bool,
    deadline: Optional[float],
    progress: Optional[ProgressLine],
) -> Undelivered:
    watches = [_Watch(p, m) for p in pipelines for m in [p.begin_close()] if m is not None]
    undelivered = Undelivered()
    try:
        while watches:
            now = time.monotonic()
            for watch in list(watches):
                why = watch.verdict(now, deadline)
                if why is not None:
                    watches.remove(watch)
                    grace = ANSWER_GRACE
                    if deadline is not None:  # a hard bound: no grace beyond it
                        grace = min(grace, max(0.0, deadline - now))
                    undelivered += watch.pipeline.end_close(why, grace, final)
            if not watches:
                break
            if progress is not None:
                progress.show(sum(w.pipeline.pending() for w in watches), now)
            wait = _POLL if deadline is None else max(0.0, min(_POLL, deadline - now))
            watches[0].marker.done.wait(wait)
    except KeyboardInterrupt:
        for watch in watches:
            undelivered += watch.pipeline.end_close("interrupted (Ctrl-C)", 0.0, final)
        _warn(undelivered, "interrupted (Ctrl-C)")
        raise
    finally:
        if progress is not None:
            progress.end()
    _warn(undelivered, "closed")
    return undelivered


class _Watch:
    """One pipeline being drained: its closing marker and when it last made progress."""

    def __init__(self, pipeline: Drainable, marker: FlushMarker) -> None:
        self.pipeline = pipeline
        self.marker = marker
        self.finished = pipeline.finished_count
        self.since = time.monotonic()

    def verdict(self, now: float, deadline: Optional[float]) -> Optional[str]:
        """None to keep waiting, else why the drain of this pipeline ends now."""
        if self.marker.done.is_set():
            return "the handler closed"
        if deadline is not None:
            return "close(timeout) ran out" if now >= deadline else None
        finished = self.pipeline.finished_count
        if finished != self.finished:
            self.finished, self.since = finished, now
            return None
        stall = self.pipeline.settings.shutdown_timeout
        if now - self.since >= stall:
            return f"nothing was delivered for shutdown_timeout={stall:g}s"
        return None


def _warn(undelivered: Undelivered, why: str) -> None:
    if undelivered.undelivered or undelivered.out:
        out = (
            f"; {undelivered.out} request(s) still waiting for the API's answer (counted when "
            "it comes, reported at exit if it does not)" if undelivered.out else ""
        )
        logger.warning(
            "interakt-logging: %s with %d payload(s) undelivered: %d lost, %d kept in the "
            "outbox%s", why, undelivered.undelivered, undelivered.lost, undelivered.kept, out,
        )


class ProgressLine:
    """``interakt-logging: delivering N queued payloads before exit (Ctrl-C to stop)`` on
    stderr, once a drain has lasted ``PROGRESS_AFTER``: redrawn in place on a terminal, else
    a new line at most every ``PROGRESS_EVERY_LINES`` seconds (a log file stays readable)."""

    def __init__(
        self, reason: str, stream: Optional[IO[str]] = None, started: Optional[float] = None
    ) -> None:
        self._reason = reason
        self._stream = stream
        self._started = time.monotonic() if started is None else started
        self._shown_at: Optional[float] = None
        self._width = 0  # of the line drawn in place on a terminal; 0 when none is open
        self._broken = False

    def show(self, pending: int, now: float) -> None:
        if self._broken or now - self._started < PROGRESS_AFTER:
            return
        stream = self._stream or sys.stderr
        try:
            tty = stream.isatty()
            every = PROGRESS_EVERY_TTY if tty else PROGRESS_EVERY_LINES
            if self._shown_at is not None and now - self._shown_at < every:
                return
            self._shown_at = now
            hint = " (Ctrl-C to stop)" if _on_main_thread() else ""
            text = (
                f"interakt-logging: delivering {pending:,} queued payloads before "
                f"{self._reason}{hint}"
            )
            if tty:
                stream.write("\r" + text.ljust(self._width))
                self._width = len(text)
            else:
                stream.write(text + "\n")
            stream.flush()
        except (AttributeError, OSError, ValueError):  # stderr closed or gone: a courtesy only
            self._broken = True

    def end(self) -> None:
        """On a terminal, end the line that was redrawn in place."""
        if not self._width or self._broken:
            return
        self._width = 0
        try:
            stream = self._stream or sys.stderr
            stream.write("\n")
            stream.flush()
        except (AttributeError, OSError, ValueError):
            self._broken = True


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _after_fork_in_child() -> None:
    _outbox.after_fork_in_child()  # first: the parent's outboxes are set aside before rebuilding
    for pipeline in list(_pipelines):
        pipeline.after_fork()


atexit.register(drain_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_outbox.before_fork,
        after_in_parent=_outbox.after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )
