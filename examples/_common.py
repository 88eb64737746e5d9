"""What every example shares: where the calls go.

With ``INTERAKT_API_KEY`` set, the examples talk to the Track API (or to ``INTERAKT_HOST`` when
that is set too). Without it, ``interakt_target()`` starts a loopback MockInteraktServer, points
``INTERAKT_API_KEY`` / ``INTERAKT_HOST`` at it (so the examples' configuration holds no key and
no host, as yours shouldn't) and, at the end, prints every request it received, one JSON line
each, prefixed with ``received:``.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator

from interakt_logging.testing import MockInteraktServer


@contextlib.contextmanager
def interakt_target() -> Iterator[None]:
    """Run the body against the real API (key set) or a printed-out loopback mock."""
    if os.environ.get("INTERAKT_API_KEY"):
        print(f"sending to {os.environ.get('INTERAKT_HOST', 'the Interakt Track API')}")
        yield
        return
    with MockInteraktServer() as server:
        os.environ["INTERAKT_API_KEY"] = "example-key"
        os.environ["INTERAKT_HOST"] = server.url
        try:
            yield
        finally:
            del os.environ["INTERAKT_API_KEY"], os.environ["INTERAKT_HOST"]
            for request in server.requests:
                print("received:", json.dumps({"path": request.path, "body": request.body}))
