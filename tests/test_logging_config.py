"""Logging configuration routes, each in a fresh interpreter (dictConfig and fileConfig close
every existing handler): dictConfig ``"()"``, fileConfig ``class=`` + ``kwargs=``, the key from
INTERAKT_API_KEY, and Python 3.12+'s queue-handler forms on whichever 3.12+ interpreters can
import the package (``python3.12``... on PATH, or listed in INTERAKT_TEST_PYTHONS)."""

from __future__ import annotations

import base64
import functools
import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import pytest

from interakt_logging.testing import MockInteraktServer

from .conftest import API_KEY

pytestmark = pytest.mark.slow  # each configuration runs in a fresh interpreter

ROOT = pathlib.Path(__file__).resolve().parent.parent
BASIC = "Basic " + base64.b64encode(f"{API_KEY}:".encode()).decode()


def _run(
    code: str, server: MockInteraktServer, *, python: str = sys.executable, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` with INTERAKT_API_KEY / INTERAKT_HOST pointing at ``server``; assert it
    succeeded. The child prints the handler's settings as JSON on its last line."""
    full_env = dict(os.environ, INTERAKT_API_KEY=API_KEY, INTERAKT_HOST=server.url,
                    PYTHONPATH=str(ROOT))
    full_env.update(env)
    result = subprocess.run(
        [python, "-c", textwrap.dedent(code)], env=full_env, capture_output=True, text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result


SETTINGS_LINE = """
import json
def report(handler):
    s = handler.settings
    print(json.dumps({"type": type(handler).__name__, "workers": s.workers,
                      "host": s.host, "shutdown_timeout": s.shutdown_timeout}))
"""


def _settings(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_dictconfig_factory_form(server: MockInteraktServer) -> None:
    result = _run(SETTINGS_LINE + """
import logging, logging.config
logging.config.dictConfig({
    "version": 1, "disable_existing_loggers": False,
    "handlers": {"interakt": {"()": "interakt_logging.InteraktHandler", "level": "INFO",
                              "workers": 2, "shutdown_timeout": 3.5}},
    "loggers": {"shop": {"handlers": ["interakt"], "level": "DEBUG"}},
})
log = logging.getLogger("shop")
log.debug("too low for the handler", extra={"interakt_event": {"user_id": "1"}})
log.info("Order Placed", extra={"interakt_event": {"user_id": 42, "traits": {"a": [1]}}})
report(log.handlers[0])
logging.shutdown()
""", server)
    assert _settings(result) == {
        "type": "InteraktHandler", "workers": 2, "host": server.url, "shutdown_timeout": 3.5,
    }
    (request,) = server.requests
    assert request.body["event"] == "Order Placed" and request.body["userId"] == "42"
    assert request.headers["Authorization"] == BASIC  # the key came from INTERAKT_API_KEY


def test_a_key_in_the_config_wins_over_the_environment(server: MockInteraktServer) -> None:
    _run("""
import logging, logging.config
logging.config.dictConfig({
    "version": 1, "disable_existing_loggers": False,
    "handlers": {"interakt": {"()": "interakt_logging.InteraktHandler", "api_key": "other"}},
    "root": {"handlers": ["interakt"], "level": "INFO"},
})
logging.info("Paid", extra={"interakt_event": {"user_id": "1"}})
logging.shutdown()
""", server)
    assert server.requests[0].headers["Authorization"] == "Basic " + base64.b64encode(
        b"other:").decode()


def test_no_key_anywhere_configures_and_warns_naming_the_variable(
    server: MockInteraktServer,
) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("INTERAKT_API_KEY", None)
    result = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import logging.config
        logging.config.dictConfig({"version": 1, "handlers": {
            "interakt": {"()": "interakt_logging.InteraktHandler"}}})
    """)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "no API key: set INTERAKT_API_KEY" in result.stderr


def test_fileconfig_class_and_kwargs(server: MockInteraktServer, tmp_path: pathlib.Path) -> None:
    ini = tmp_path / "logging.ini"
    ini.write_text(textwrap.dedent("""
        [loggers]
        keys=root

        [handlers]
        keys=interakt

        [formatters]
        keys=

        [logger_root]
        level=INFO
        handlers=interakt

        [handler_interakt]
        class=interakt_logging.InteraktHandler
        level=INFO
        kwargs={"workers": 3, "shutdown_timeout": 2.5}
    """))
    result = _run(SETTINGS_LINE + f"""
import logging, logging.config
logging.config.fileConfig({str(ini)!r}, disable_existing_loggers=False)
logging.info("Signed Up", extra={{"interakt_user": {{"phone_number": "9999999999"}}}})
report(logging.getLogger().handlers[0])
logging.shutdown()
""", server)
    assert _settings(result) == {
        "type": "InteraktHandler", "workers": 3, "host": server.url, "shutdown_timeout": 2.5,
    }
    (request,) = server.requests
    assert request.path.endswith("/users/")
    assert request.body["phoneNumber"] == "9999999999" and request.body["countryCode"] == "+91"
    assert request.headers["Authorization"] == BASIC


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="3.12+ treats 'class' as a queue form")
def test_dictconfig_class_form_before_312(server: MockInteraktServer) -> None:
    result = _run(SETTINGS_LINE + """
import logging, logging.config
logging.config.dictConfig({
    "version": 1, "disable_existing_loggers": False,
    "handlers": {"interakt": {"class": "interakt_logging.InteraktHandler", "workers": 2}},
    "root": {"handlers": ["interakt"], "level": "INFO"},
})
logging.info("Paid", extra={"interakt_event": {"user_id": "1"}})
report(logging.getLogger().handlers[0])
logging.shutdown()
""", server)
    assert _settings(result)["workers"] == 2
    assert [r.body["event"] for r in server.requests] == ["Paid"]


# -- Python 3.12+ -----------------------------------------------------------------------------

@functools.cache
def _pythons_312() -> tuple[str, ...]:
    """3.12+ interpreters that can import the package and its dependencies from this tree."""
    candidates = [p for p in os.environ.get("INTERAKT_TEST_PYTHONS", "").split(os.pathsep) if p]
    if sys.version_info >= (3, 12):
        candidates.append(sys.executable)
    candidates += filter(None, (shutil.which(f"python3.{minor}") for minor in (12, 13, 14)))
    found: list[str] = []
    for python in dict.fromkeys(candidates):
        try:
            probe = subprocess.run(
                [python, "-c", "import sys, interakt_logging; assert sys.version_info >= (3, 12)"],
                env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, timeout=60,
            )
        except OSError:
            continue
        if probe.returncode == 0:
            found.append(python)
    return tuple(found)


@pytest.fixture
def python312() -> list[str]:
    pythons = list(_pythons_312())
    if not pythons:
        pytest.skip("no Python 3.12+ with the dependencies installed (see INTERAKT_TEST_PYTHONS)")
    return pythons


def test_312_class_form_sets_the_queue_and_listener_aside(
    python312: list[str], server: MockInteraktServer
) -> None:
    """``"class"`` makes 3.12+ dictConfig pass a queue and attach a plain QueueListener (3.12.x
    also insists on ``"handlers"`` and, in early patch releases, drops the other keys, so the
    settings come from the environment). The handler keeps its own queue and sender, and the
    Python docs' recipe, ``listener.start()`` then ``listener.stop()`` at exit, delivers."""
    for python in python312:
        _run(SETTINGS_LINE + """
import atexit, logging, logging.config
logging.config.dictConfig({
    "version": 1, "disable_existing_loggers": False,
    "handlers": {"interakt": {"class": "interakt_logging.InteraktHandler", "handlers": []}},
    "root": {"handlers": ["interakt"], "level": "INFO"},
})
handler = logging.getHandlerByName("interakt")
handler.listener.start()
atexit.register(handler.listener.stop)
logging.info("Paid", extra={"interakt_event": {"user_id": "1"}})
report(handler)
""", server, python=python)
    assert [r.body["event"] for r in server.requests] == ["Paid"] * len(python312)


def test_312_stdlib_queue_handler_in_front(
    python312: list[str], server: MockInteraktServer
) -> None:
    """examples/queue_handler_312.py: the stdlib QueueHandler + QueueListener hand records to
    InteraktHandler, including those still queued when the listener stops at exit."""
    env = dict(os.environ, INTERAKT_API_KEY=API_KEY, INTERAKT_HOST=server.url)
    for python in python312:
        result = subprocess.run(
            [python, str(ROOT / "examples" / "queue_handler_312.py")], env=env,
            capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 0, result.stderr
    paths = sorted(r.path for r in server.requests)
    assert paths == sorted(["/v1/public/track/events/", "/v1/public/track/users/"] * len(python312))
