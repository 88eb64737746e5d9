"""Stop paths that skip the exit drain: a process that dies of SIGTERM's default action.

Such a process runs no atexit hook. It is how Docker, Kubernetes and systemd stop a service, how
``multiprocessing.Pool.terminate()`` (and so the end of a ``with Pool()`` block) stops its
workers, and how uvicorn ends: after its graceful shutdown it puts back the SIGTERM action it
found when it started serving and raises the signal again. When an InteraktHandler is built in
the main thread, this module looks at SIGTERM's action:

- The default: it installs ``drain_then_die``, which delivers what is queued (each handler
  bounded by its ``shutdown_timeout``), then restores the default action and raises SIGTERM
  again: the process still dies of the signal, only after the drain. uvicorn, started after the
  handler was built (``uvicorn.run(app)``, ``--log-config``), saves this handler and puts it back
  before its re-raise, so that re-raise drains too.
- uvicorn's own handler, seen when the app module is imported inside uvicorn's
  ``capture_signals`` (``uvicorn module:app`` with logging configured in the module): uvicorn will
  put back the default action and re-raise, with nothing of ours in between. Its handler is
  wrapped: uvicorn's runs first, unchanged, then SIGTERM is blocked in the main thread, so the
  re-raise stays pending while uvicorn returns and the interpreter exits normally; the exit drain
  runs, then the pending SIGTERM is delivered with the default action.
- Anything else is the app's or its server's choice and is left alone (gunicorn's and Django's
  handlers end the process with a normal exit, where the exit drain runs).

Celery's prefork children end with ``os._exit()`` after sending ``worker_process_shutdown``:
when ``celery.signals`` is loaded as a handler is built, the drain is connected to that signal
(children forked later inherit the connection).

``INTERAKT_EXIT_HOOKS=0`` installs none of this.

One stop path cannot be helped from inside: Django's runserver autoreloader SIGKILLs its serving
child 0.25 s after Ctrl-C. There, the exit drain first says how many payloads it is about to
deliver, so whatever the kill cuts short is at least counted.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any, Callable, Optional

from . import _lifecycle

OPT_OUT_ENV = "INTERAKT_EXIT_HOOKS"

SignalHandler = Callable[[int, Optional[FrameType]], Any]

_draining = False  # drain_then_die is running: a repeated SIGTERM waits for it (it is bounded)
_held = False  # uvicorn's SIGTERM ran through HoldForExitDrain: SIGTERM is blocked


def install() -> None:
    """Make SIGTERM and Celery's pool-child exit drain first (see the module docstring).
    Called for every handler built; idempotent."""
    if os.environ.get(OPT_OUT_ENV, "").strip().lower() in ("0", "false", "no", "off"):
        return
    celery_signals = sys.modules.get("celery.signals")
    if celery_signals is not None:
        celery_signals.worker_process_shutdown.connect(
            _drain_in_celery_child, weak=False, dispatch_uid="interakt_logging.exit_drain"
        )
    if (
        threading.current_thread() is threading.main_thread()
        and hasattr(signal, "pthread_sigmask")  # Windows: no SIGTERM to speak of
    ):
        _install_sigterm()


def _install_sigterm() -> None:
    current = signal.getsignal(signal.SIGTERM)
    if current is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, drain_then_die)
    elif _is_uvicorns(current) and not isinstance(current, HoldForExitDrain):
        signal.signal(signal.SIGTERM, HoldForExitDrain(current))  # type: ignore[arg-type]


def drain_then_die(signum: int, frame: Optional[FrameType]) -> None:
    """SIGTERM where the default action was in place: deliver what is queued, then die of it."""
    global _draining
    if _draining or _lifecycle.defer_signal_while_draining(signum):
        return  # a drain under way (maybe the one this signal interrupted) finishes first
    _draining = True
    try:
        _lifecycle.drain_all("SIGTERM ends the process")
    finally:
        _lifecycle.die_of(signum)


class HoldForExitDrain:
    """uvicorn's SIGTERM handler, then SIGTERM blocked in the main thread: the re-raise uvicorn
    makes after its graceful shutdown waits for ``_deliver_held_sigterm`` at exit."""

    def __init__(self, inner: SignalHandler) -> None:
        self.inner = inner

    def __call__(self, signum: int, frame: Optional[FrameType]) -> None:
        global _held
        try:
            self.inner(signum, frame)
        finally:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
            _held = True


def _drain_in_celery_child(**_: Any) -> None:
    _lifecycle.drain_all()


def _is_uvicorns(handler: Any) -> bool:
    """uvicorn's ``Server.handle_exit``, installed by ``Server.capture_signals``."""
    owner = getattr(handler, "__self__", None)
    return (
        type(owner).__module__.startswith("uvicorn.")
        and getattr(handler, "__name__", None) == "handle_exit"
    )



def _deliver_held_sigterm() -> None:
    """At exit, after uvicorn's re-raise was held: drain, then die of the pending SIGTERM as
    uvicorn meant the process to (or just unblock it, when none is pending)."""
    if not _held:
        return
    _lifecycle.drain_all()
    if signal.SIGTERM in signal.sigpending():
        _lifecycle.die_of(signal.SIGTERM)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def _count_before_a_reloader_kill() -> None:
    """In Django's autoreloading runserver child, say at once what the drain has ahead of it."""
    if os.environ.get("RUN_MAIN") != "true" or "django.utils.autoreload" not in sys.modules:
        return
    pending = sum(pipeline.pending() for pipeline in list(_lifecycle._pipelines))
    if pending:
        print(
            f"interakt-logging: delivering {pending} queued payload(s) before exit; runserver's "
            "autoreloader kills this process 0.25 s after Ctrl-C, so any not delivered by then "
            "are lost (`runserver --noreload` waits for them)",
            file=sys.stderr, flush=True,
        )


# Registered after _lifecycle's drain (imported above), so they run before it.
atexit.register(_deliver_held_sigterm)
atexit.register(_count_before_a_reloader_kill)
