"""The library's own log lines never carry a tag's values, nor the API key.

A tag holds phone numbers, emails and traits; RedactTags and the summary after our handler keep
them out of the app's other log outputs, and our warnings must not put them back: a refusal is
described by field, type and size (``traits.email: expected ..., got a str of 16 characters``),
and the API's message, which may echo the request, has the payload's values masked. Every
record the ``interakt_logging`` logger emits is checked fully formatted (traceback included), at
DEBUG with ``debug=True``.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import socket
from collections.abc import Iterator
from typing import Any, Callable, List, Tuple

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from interakt_logging import (
    EVENTS_PATH,
    APIError,
    DeliveryError,
    InteraktHandler,
    InteraktProcessor,
    ValidationError,
)
from interakt_logging._errors import shape
from interakt_logging.testing import MockInteraktServer, Reply, capture

from .conftest import API_KEY
from .test_properties import HostileStr, hostile, tags

MARKER = "mk7Secret9876543210"  # stands for a phone number, an email, a trait
LIBRARY = logging.getLogger("interakt_logging")

Reports = List[Tuple[Exception, Any]]


class _Keep(logging.Handler):
    """Every record of the library's logger, as a log file would get it (traceback included)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        self.lines: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def library_log() -> Iterator[_Keep]:
    keep = _Keep()
    level = LIBRARY.level
    LIBRARY.addHandler(keep)
    try:
        yield keep
    finally:
        LIBRARY.removeHandler(keep)
        LIBRARY.setLevel(level)  # debug=True sets it to DEBUG


PHONE = MARKER[-10:]


def _assert_clean(lines: List[str]) -> None:
    leaks = [line for line in lines if MARKER in line or PHONE in line or API_KEY in line]
    assert leaks == [], leaks


# -- refused tags: any value holding the marker --------------------------------------------------


marked = st.sampled_from([
    MARKER, MARKER.encode(), [MARKER], (MARKER, 1), {"k": MARKER}, {MARKER}, HostileStr(MARKER),
    f"{MARKER}@example.com", f'"{MARKER}"\n', float("nan"),
])
"""Values that hold the marker (a str, bytes, containers, a str subclass), and a NaN that
makes sure something is refused."""

FIELDS = ["user_id", "phone_number", "country_code", "created_at", "event", "traits",
          "usr_id", "trait"]


@st.composite
def marked_tags(draw: st.DrawFn) -> dict[str, Any]:
    """A tag from the hostile strategy with the marker put into one to three of its fields
    (or a trait, or a key that has no business there)."""
    tag = draw(tags(hostile))
    for field in draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=3)):
        value = draw(marked)
        if field == "trait":
            traits = tag.get("traits")
            tag["traits"] = {**(traits if type(traits) is dict else {}), "email": value}
        else:
            tag[field] = value
    return tag


def _through_every_door(tag: dict[str, Any], message: str) -> Reports:
    reports: Reports = []

    def keep(error: Exception, payload: Any) -> None:
        reports.append((error, payload))

    with capture():
        for sync in (False, True):
            handler = InteraktHandler(debug=True, sync_mode=sync, on_error=keep)
            log = logging.getLogger("test.privacy")
            log.propagate = False
            log.addHandler(handler)
            try:
                log.warning(message, extra={"interakt_event": tag})
                InteraktProcessor(handler)(None, "info", {"event": message, "interakt_event": tag})
                with contextlib.suppress(ValidationError):
                    handler.submit(EVENTS_PATH, tag, default_event=message)
                handler.flush(10)
            finally:
                log.removeHandler(handler)
                handler.close()
    return reports


@given(tag=marked_tags(), message=st.sampled_from(["Order Placed", MARKER, f"%s {MARKER}"]))
def test_no_library_log_line_carries_a_refused_tags_values(
    tag: dict[str, Any], message: str
) -> None:
    keep = _Keep()
    level = LIBRARY.level
    LIBRARY.addHandler(keep)
    try:
        reports = _through_every_door(tag, message)
    finally:
        LIBRARY.removeHandler(keep)
        LIBRARY.setLevel(level)
    _assert_clean(keep.lines)
    for error, _ in reports:  # what is refused is described, not shown
        assert not isinstance(error, ValidationError) or MARKER not in str(error), error
        assert API_KEY not in str(error) and API_KEY not in repr(error)


def test_a_refusal_is_described_by_type_and_size(
    make_handler: Callable[..., InteraktHandler], library_log: _Keep
) -> None:
    reports: Reports = []
    handler = make_handler(on_error=lambda error, payload: reports.append((error, payload)))
    log = logging.getLogger("test.privacy.described")
    log.addHandler(handler)
    try:
        log.warning("Signed Up", extra={"interakt_user": {
            "user_id": "42", "traits": {"email": b"asha@example.com"}}})
    finally:
        log.removeHandler(handler)
    (error, tag), = reports
    assert isinstance(error, ValidationError) and error.field == "traits.email"
    assert error.given == b"asha@example.com"  # the app may still look at it
    assert tag["traits"]["email"] == b"asha@example.com"
    assert str(error).endswith("got a bytes of 16 bytes")
    (line,) = [line for line in library_log.lines if "traits.email" in line]
    assert "asha" not in line and "a bytes of 16 bytes" in line


SHAPES = [
    (None, "None"), (True, "True"), ("", "a str of 0 characters"),
    ("9876543210", "a str of 10 characters"), (9876543210, "an int of 10 digits"),
    (-3, "a negative int of 1 digit"), (10**5000, "an int of 16,610 bits"), (2.5, "a float"),
    (float("nan"), "a float (nan)"), ({"a": 1}, "a dict of 1 item"), ([1, 2], "a list of 2 items"),
    (HostileStr("x"), "a HostileStr"), (datetime.date(2026, 1, 1), "a date"),
]


@pytest.mark.parametrize(("value", "described"), [
    pytest.param(value, described, id=described) for value, described in SHAPES
])
def test_shape_names_the_type_and_size_only(value: Any, described: str) -> None:
    assert shape(value) == described


# -- the API's answer and network failures -----------------------------------------------------------


def _echo(status: int) -> Callable[[Any], Reply]:
    def reply(request: Any) -> Reply:  # a server that quotes the request back, as some do
        return Reply(status, body={"result": False, "message": f"bad request {request.raw!r}: "
                                   f"{request.body}"})
    return reply


def _closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize("sync", [False, True], ids=["background", "sync"])
@pytest.mark.parametrize("failure", ["400-echo", "500-echo", "no-server"])
def test_api_and_delivery_failures_do_not_log_values(
    failure: str, sync: bool, server: MockInteraktServer,
    make_handler: Callable[..., InteraktHandler], library_log: _Keep,
) -> None:
    """The API's message may echo the request (the mock here quotes its body): the warning and
    str(APIError) keep the message with the payload's values masked; APIError.message keeps it
    whole for on_error."""
    reports: Reports = []
    host = server.url
    if failure == "no-server":
        host = _closed_port()
    else:
        server.responder = _echo(400 if failure == "400-echo" else 500)
    handler = make_handler(host=host, sync_mode=sync, debug=True, max_retries=1,
                           on_error=lambda error, payload: reports.append((error, payload)))
    log = logging.getLogger("test.privacy.api")
    log.addHandler(handler)
    try:
        log.warning("Signed Up", extra={"interakt_user": {
            "user_id": "u-7", "phone_number": PHONE, "country_code": "+91",
            "traits": {"email": f"{MARKER}@example.com", "note": f'say "{MARKER}"\n'}}})
        handler.flush(10)
    finally:
        log.removeHandler(handler)
    (error, payload), = reports
    _assert_clean(library_log.lines)
    assert [line for line in library_log.lines if "WARNING" in line] != []
    if failure == "no-server":
        assert isinstance(error, DeliveryError)
    else:
        assert isinstance(error, APIError) and MARKER in error.message  # on_error sees it all
        assert MARKER not in str(error) and PHONE not in str(error)  # log.exception does not
        assert payload["body"]["traits"]["email"] == f"{MARKER}@example.com"
        (warning,) = [line for line in library_log.lines if "answered" in line]
        assert "<value>" in warning and "bad request" in warning
    assert API_KEY not in str(error) and API_KEY not in repr(error)


def test_a_bad_setting_is_shown_as_given_but_never_the_key() -> None:
    """Settings are configuration, not personal data: the value helps, so it is shown."""
    with pytest.raises(ValidationError) as info:
        InteraktHandler(timeout="5s")
    assert str(info.value).endswith("got '5s' (str)")
    with pytest.raises(ValidationError) as info:
        InteraktHandler(api_key=12345678)  # type: ignore[arg-type]
    assert "12345678" not in str(info.value) and "hidden" in str(info.value)


@pytest.mark.parametrize("quote", [
    lambda body: body.decode(),  # the body as received
    lambda body: json.dumps(json.loads(body)),  # re-encoded
    lambda body: repr(body),  # a bytes repr
    lambda body: str(json.loads(body)),  # a Python dict's str
], ids=["raw", "json", "bytes-repr", "dict-str"])
def test_an_api_message_quoting_the_request_is_masked(quote: Callable[[bytes], str]) -> None:
    sent = orjson.dumps({"userId": "u-7", "phoneNumber": PHONE, "traits": {
        "note": f'say "{MARKER}"\n', "n": 9876543210, "x": "é" + MARKER}})
    error = APIError(400, f"invalid request: {quote(sent)}", sent=sent)
    assert error.message.startswith("invalid request: ")
    text = str(error)
    assert MARKER not in text and PHONE not in text and "<value>" in text, text
    assert text.startswith("Interakt API answered 400: invalid request: ")


def test_a_value_cut_by_the_length_bound_is_masked_once_long_values_shrank() -> None:
    """Regression: the answer was cut to 300 characters plus the longest value before masking;
    once long values had shrunk to ``<value>``, the piece of a value cut at that bound moved
    into the 300 characters shown, unmasked (10 digits of the phone number here)."""
    long_a, long_b = "A" * 150, "B" * 150
    sent = orjson.dumps({"userId": "u-7", "traits": {"a": long_a, "b": long_b, "p": PHONE * 2}})
    message = long_a + long_b + "x" * 140 + PHONE * 2 + " and more"
    text = str(APIError(400, message, sent=sent))
    assert not any(PHONE[i:i + 5] in text for i in range(len(PHONE) - 4)), text


@pytest.mark.parametrize("host", ["https://user:s3cretpw@api.interakt.ai",
                                  "ftp://user:s3cretpw@api.interakt.ai"])
def test_a_host_with_credentials_is_refused_without_showing_them(host: str) -> None:
    """It was refused with the URL in the message, password included."""
    with pytest.raises(ValidationError) as info:
        InteraktHandler(host=host)
    assert info.value.field == "host" and "s3cretpw" not in str(info.value)
