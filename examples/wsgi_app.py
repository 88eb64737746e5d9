"""A web app that logs one Interakt event per request: WSGI middleware, so it fits any WSGI
framework (Flask: ``app.wsgi_app = InteraktPageViews(app.wsgi_app)``; Django:
``application = InteraktPageViews(get_wsgi_application())``).

    python examples/wsgi_app.py

It serves the app with the standard library's wsgiref on 127.0.0.1, calls it three times and
stops: the logging call in the request path is cheap (validated and queued; sent by the
background sender), so requests do not wait for the Track API.
"""

from __future__ import annotations

import logging
import threading
import urllib.request
from collections.abc import Iterable
from typing import Any, Callable
from wsgiref.simple_server import WSGIRequestHandler, make_server

from _common import interakt_target

from interakt_logging import InteraktHandler

log = logging.getLogger("web")

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class InteraktPageViews:
    """Logs "Page Viewed" for every request of a signed-in user (here: the X-User-Id header)."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        user_id = environ.get("HTTP_X_USER_ID")
        if user_id:
            log.info("Page Viewed", extra={"interakt_event": {
                "user_id": user_id, "traits": {"path": environ.get("PATH_INFO", "/")},
            }})
        return self.app(environ, start_response)


def hello(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello\n"]


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def main() -> None:
    logging.getLogger().addHandler(InteraktHandler())
    log.setLevel(logging.INFO)
    with make_server("127.0.0.1", 0, InteraktPageViews(hello), handler_class=QuietHandler) as web:
        threading.Thread(target=web.serve_forever, daemon=True).start()
        for path, user in (("/", "42"), ("/pricing", "42"), ("/about", None)):
            request = urllib.request.Request(f"http://127.0.0.1:{web.server_port}{path}")
            if user:
                request.add_header("X-User-Id", user)
            with urllib.request.urlopen(request, timeout=10) as response:
                print(path, response.status, response.read().decode().strip())
        web.shutdown()
    logging.shutdown()


if __name__ == "__main__":
    with interakt_target():
        main()
