"""Process events every live pipeline must react to: interpreter exit and fork.

One atexit hook and one ``os.register_at_fork`` callback serve all pipelines through a WeakSet,
so creating handlers never piles up callbacks and a collected pipeline is simply skipped. The
fork hooks also suspend and hand over the open outbox files (``_outbox``'s fork functions), so
this module is the one place where process events are handled.
The atexit hook runs before ``logging.shutdown`` (registered earlier, so run later) while the
daemon sender threads are still alive, and it never starts a thread (Python 3.12+ forbids that).
"""

from __future__ import annotations

import atexit
import logging
import os
import time
import weakref
from typing import TYPE_CHECKING

from . import _outbox

if TYPE_CHECKING:
    from ._pipeline import Pipeline

_pipelines: weakref.WeakSet[Pipeline] = weakref.WeakSet()


def register(pipeline: Pipeline) -> None:
    _pipelines.add(pipeline)


def unregister(pipeline: Pipeline) -> None:
    _pipelines.discard(pipeline)


def _drain_at_exit() -> None:
    """Deliver what is queued, each pipeline bounded by its shutdown_timeout, all in parallel
    in the sense that one shared deadline covers them."""
    pipelines = list(_pipelines)
    if not pipelines:
        return
    deadline = time.monotonic() + max(p.settings.shutdown_timeout for p in pipelines)
    for pipeline in pipelines:
        try:
            pipeline.close(timeout=max(0.0, deadline - time.monotonic()))
        except Exception:  # pragma: no cover - a bug must not stop the other drains
            logging.getLogger("interakt_logging").exception("interakt-logging: exit drain failed")


def _after_fork_in_child() -> None:
    _outbox.after_fork_in_child()  # first: the parent's outboxes are set aside before rebuilding
    for pipeline in list(_pipelines):
        pipeline.after_fork()


atexit.register(_drain_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_outbox.before_fork,
        after_in_parent=_outbox.after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )
