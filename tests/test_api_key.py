"""The API key as users have it: the decoded key, or the dashboard's Secret Key as shown.

Both forms must put the same Authorization header on the wire; the debug log says which form
was detected and from where, and neither the key nor its base64 form ever shows.
"""

from __future__ import annotations

import base64
import logging
import random
import string
import traceback
from typing import Callable, List

import pytest

from interakt_logging import InteraktHandler, ValidationError
from interakt_logging._settings import resolve_api_key
from interakt_logging.testing import MockInteraktServer, Reply

KEY = "Xk3vQ9sLr2TmZ8pWb7nYc4dHf6gJa1eU5iOo0"


def dashboard_form(key: str) -> str:
    return base64.b64encode(f"{key}:".encode()).decode()


def _random_keys() -> List[str]:
    rng = random.Random(7)
    alphabet = string.ascii_letters + string.digits + "-_"
    # Every length modulo 3, so every base64 padding variant of the dashboard form occurs.
    return ["".join(rng.choice(alphabet) for _ in range(n)) for n in range(20, 50)]


@pytest.mark.parametrize("key", _random_keys())
def test_both_forms_resolve_to_the_same_key(key: str) -> None:
    assert resolve_api_key(key) == key
    assert resolve_api_key(dashboard_form(key)) == key
    assert resolve_api_key(f"  {dashboard_form(key)}\n") == key  # pasted with whitespace


@pytest.mark.parametrize("given", [
    "abcd",  # valid base64, but of binary bytes
    base64.b64encode(b"a:b:").decode(),  # a colon inside: not a key
    base64.b64encode(b"key").decode(),  # no trailing colon
    base64.b64encode(b":").decode(),  # nothing before the colon
    base64.b64encode(b"k\x01:").decode(),  # unprintable
    KEY + "=",  # not valid base64 length
])
def test_other_strings_are_used_as_given(given: str) -> None:
    assert resolve_api_key(given) == given


@pytest.mark.parametrize("form", ["decoded", "dashboard", "dashboard-env", "decoded-env"])
def test_same_authorization_header_on_the_wire(
    form: str, server: MockInteraktServer, monkeypatch: pytest.MonkeyPatch,
    make_handler: Callable[..., InteraktHandler], logger: logging.Logger,
) -> None:
    given = dashboard_form(KEY) if form.startswith("dashboard") else KEY
    if form.endswith("-env"):
        monkeypatch.setenv("INTERAKT_API_KEY", given)
        handler = make_handler(sync_mode=True)
    else:
        handler = make_handler(api_key=given, sync_mode=True)
    logger.addHandler(handler)
    logger.info("Order Placed", extra={"interakt_event": {"user_id": "1"}})
    (request,) = server.requests
    assert request.headers["Authorization"] == f"Basic {dashboard_form(KEY)}"


@pytest.mark.parametrize(("given", "source", "said"), [
    (KEY, "argument", "used as given (decoded form)"),
    (dashboard_form(KEY), "argument", "dashboard Secret Key form detected"),
    (KEY, "env", "used as given (decoded form)"),
    (dashboard_form(KEY), "env", "dashboard Secret Key form detected"),
])
def test_debug_log_says_which_form_and_where_never_the_key(
    given: str, source: str, said: str,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG, logger="interakt_logging"):
        if source == "env":
            monkeypatch.setenv("INTERAKT_API_KEY", given)
            resolve_api_key(None)
        else:
            resolve_api_key(given)
    (line,) = [r.getMessage() for r in caplog.records if "api key" in r.getMessage()]
    assert said in line
    assert ("INTERAKT_API_KEY" in line) == (source == "env")
    _assert_no_secret(caplog.text)


def test_nothing_shows_the_key_while_sending_and_failing(
    server: MockInteraktServer, make_handler: Callable[..., InteraktHandler],
    logger: logging.Logger, caplog: pytest.LogCaptureFixture,
) -> None:
    errors: List[Exception] = []
    server.script(Reply(401), Reply(500, body=b"not json"))
    with caplog.at_level(logging.DEBUG):
        for host in (server.url, "http://127.0.0.1:1"):
            handler = make_handler(api_key=dashboard_form(KEY), host=host, debug=True,
                                   max_retries=0, on_error=lambda e, p: errors.append(e))
            logger.addHandler(handler)
            for user_id in ("1", "2"):
                logger.info("Order Placed", extra={"interakt_event": {"user_id": user_id}})
            assert handler.flush(10).failed == 2  # refused, then unreachable
            _assert_no_secret(repr(handler), str(handler), repr(handler.settings),
                              repr(handler.pipeline), repr(handler.pipeline.transport))
    logging.getLogger("interakt_logging").setLevel(logging.NOTSET)
    assert len(errors) == 4
    assert "POST /v1/public/track/events/ -> 401" in caplog.text  # debug lines were on
    _assert_no_secret(caplog.text)
    for error in errors:
        _assert_no_secret(str(error), repr(error), "".join(traceback.format_exception(
            type(error), error, error.__traceback__)))


@pytest.mark.parametrize("bad", [b"bytes-key", 12345, "   "])
def test_bad_keys_are_described_never_shown(bad: object) -> None:
    with pytest.raises(ValidationError) as info:
        InteraktHandler(api_key=bad)  # type: ignore[arg-type]
    assert info.value.field == "api_key"
    assert "bytes-key" not in str(info.value) and "12345" not in str(info.value)
    assert info.value.given in ("<a bytes, hidden>", "<a int, hidden>", "<empty>")


def _assert_no_secret(*texts: str) -> None:
    secrets = (KEY, dashboard_form(KEY), base64.b64encode(KEY.encode()).decode())
    for text in texts:
        for secret in secrets:
            assert secret not in text


def test_debug_setting_shows_the_key_form(caplog: pytest.LogCaptureFixture) -> None:
    library = logging.getLogger("interakt_logging")
    try:
        with caplog.at_level(logging.NOTSET):
            InteraktHandler(api_key=dashboard_form(KEY), debug=True).close()
    finally:
        library.setLevel(logging.NOTSET)
    assert "dashboard Secret Key form detected" in caplog.text
    _assert_no_secret(caplog.text)


# -- no key at all: the app starts; what would be sent is reported -----------------------------


@pytest.fixture
def no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INTERAKT_API_KEY", raising=False)


@pytest.mark.parametrize("sync_mode", [False, True], ids=["background", "sync"])
def test_without_a_key_the_handler_builds_warns_once_and_reports_each_payload(
    no_key: None, sync_mode: bool, server: MockInteraktServer,
    make_handler: Callable[..., InteraktHandler], logger: logging.Logger,
    caplog: pytest.LogCaptureFixture,
) -> None:
    reported: List[tuple[Exception, object]] = []
    with caplog.at_level(logging.WARNING, logger="interakt_logging"):
        handler = make_handler(sync_mode=sync_mode,
                               on_error=lambda error, payload: reported.append((error, payload)))
    (warning,) = [r for r in caplog.records if r.name == "interakt_logging"]
    assert "INTERAKT_API_KEY" in warning.getMessage()
    logger.addHandler(handler)
    for user_id in ("1", "2", "3"):
        logger.info("Order Placed", extra={"interakt_event": {"user_id": user_id}})  # no raise
    logger.info("not tagged")
    assert [type(e).__name__ for e, _ in reported] == ["ValidationError"] * 3
    assert {e.field for e, _ in reported} == {"api_key"}  # type: ignore[attr-defined]
    assert "INTERAKT_API_KEY" in str(reported[0][0])
    assert [p["body"]["userId"] for _, p in reported] == ["1", "2", "3"]  # type: ignore[index]
    assert handler.stats()["failed"] == 3 and handler.stats()["sent"] == 0
    assert handler.flush(5)
    assert server.requests == []


def test_a_dict_config_without_a_key_loads(no_key: None) -> None:
    """Django's LOGGING runs for every manage.py command (migrate, collectstatic, CI steps)."""
    import logging.config

    logging.config.dictConfig({
        "version": 1, "disable_existing_loggers": False,
        "handlers": {"interakt": {"()": "interakt_logging.InteraktHandler"}},
        "loggers": {"tests.no_key.django": {"handlers": ["interakt"], "level": "INFO"}},
    })
    log = logging.getLogger("tests.no_key.django")
    try:
        log.info("Order Placed", extra={"interakt_event": {"user_id": "1"}})
        (handler,) = log.handlers
        assert isinstance(handler, InteraktHandler) and handler.stats()["failed"] == 1
    finally:
        for handler in list(log.handlers):
            log.removeHandler(handler)
            handler.close()


@pytest.mark.parametrize("bad", ["", "  \n", 42])
def test_a_present_but_malformed_key_is_still_an_error_at_construction(
    no_key: None, bad: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValidationError) as info:
        InteraktHandler(api_key=bad)  # type: ignore[arg-type]
    assert info.value.field == "api_key"
    if isinstance(bad, str):
        monkeypatch.setenv("INTERAKT_API_KEY", bad)
        with pytest.raises(ValidationError, match="INTERAKT_API_KEY"):
            InteraktHandler()


def test_track_without_a_key_raises_at_the_call(no_key: None) -> None:
    from interakt_logging import track

    track.shutdown()
    with pytest.raises(ValidationError, match="INTERAKT_API_KEY") as info:
        track.event(user_id="1", event="Order Placed")
    assert info.value.field == "api_key"
    assert track.default_client is None
