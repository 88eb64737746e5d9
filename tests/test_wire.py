"""What goes over the wire: paths, headers and bodies agree with interakt-track-python 1.0.7.

The expected bodies are what the original SDK's ``Client.user`` / ``Client.event`` build for
the same arguments (key order included), plus ``createdAt``.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import decimal
import logging
import uuid
from typing import Any, Callable

import pytest

from interakt_logging import InteraktHandler, __version__
from interakt_logging.testing import MockInteraktServer

from .conftest import API_KEY

EVENTS = "/v1/public/track/events/"
USERS = "/v1/public/track/users/"


def _send(logger: logging.Logger, server: MockInteraktServer, handler: InteraktHandler,
          tag_name: str, tag: dict[str, Any], msg: str = "Order Placed") -> dict[str, Any]:
    logger.addHandler(handler)
    logger.info(msg, extra={tag_name: tag})
    (request,) = server.wait_for(1)
    return {"path": request.path, "headers": request.headers, "body": request.body}


CASES = [
    pytest.param(
        "interakt_event",
        {"user_id": "u1", "traits": {"orderNumber": "CUS001"}, "country_code": "+91",
         "phone_number": "9999999999"},
        EVENTS,
        {"event": "Order Placed", "traits": {"orderNumber": "CUS001"}, "userId": "u1",
         "countryCode": "+91", "phoneNumber": "9999999999"},
        id="event-doc-example",
    ),
    pytest.param(
        "interakt_event", {"user_id": 42}, EVENTS,
        {"event": "Order Placed", "traits": {}, "userId": "42"},
        id="event-numeric-user-id",
    ),
    pytest.param(
        "interakt_event", {"user_id": "42", "event": "Cart Abandoned", "traits": None}, EVENTS,
        {"event": "Cart Abandoned", "traits": {}, "userId": "42"},
        id="event-name-from-tag",
    ),
    pytest.param(
        "interakt_user",
        {"user_id": "42", "phone_number": "9999999999", "country_code": "+91",
         "traits": {"name": "John"}},
        USERS,
        {"traits": {"name": "John"}, "userId": "42", "countryCode": "+91",
         "phoneNumber": "9999999999"},
        id="user-full",
    ),
    pytest.param(
        "interakt_user", {"phone_number": "4155550100", "country_code": "+1"}, USERS,
        {"traits": {}, "countryCode": "+1", "phoneNumber": "4155550100"},
        id="user-phone-only",
    ),
    pytest.param(
        "interakt_user", {"phone_number": "9999999999"}, USERS,
        {"traits": {}, "countryCode": "+91", "phoneNumber": "9999999999"},
        id="user-default-country-code",
    ),
    pytest.param(
        "interakt_user",
        {"user_id": 7, "traits": {"s": "x", "i": 1, "f": 1.5, "b": True, "n": None,
                                  "l": [1, "a", False], "d": {"nested": [1, 2]}}},
        USERS,
        {"traits": {"s": "x", "i": 1, "f": 1.5, "b": True, "n": None, "l": [1, "a", False],
                    "d": {"nested": [1, 2]}}, "userId": "7"},
        id="user-every-json-type",
    ),
]


@pytest.mark.parametrize(("tag_name", "tag", "path", "expected"), CASES)
def test_body_matches_original_sdk(
    logger: logging.Logger, server: MockInteraktServer,
    make_handler: Callable[..., InteraktHandler], tag_name: str, tag: dict[str, Any],
    path: str, expected: dict[str, Any],
) -> None:
    sent = _send(logger, server, make_handler(), tag_name, tag)
    assert sent["path"] == path
    body = dict(sent["body"])
    created = body.pop("createdAt")
    assert body == expected
    assert list(body) == list(expected), "key order follows the original SDK"
    assert created.endswith("Z") and len(created) == len("2026-11-26T10:52:39.123Z")


def test_headers(logger: logging.Logger, server: MockInteraktServer,
                 make_handler: Callable[..., InteraktHandler]) -> None:
    sent = _send(logger, server, make_handler(), "interakt_event", {"user_id": "1"})
    headers = sent["headers"]
    token = base64.b64encode(f"{API_KEY}:".encode()).decode()
    assert headers["Authorization"] == f"Basic {token}"
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"] == f"interakt-logging/{__version__}"


def test_created_at_is_the_record_time(logger: logging.Logger, server: MockInteraktServer,
                                       make_handler: Callable[..., InteraktHandler]) -> None:
    class Fixed(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            record.created = 1764154359.1234
            return True

    handler = make_handler()
    logger.addFilter(Fixed())
    sent = _send(logger, server, handler, "interakt_event", {"user_id": "1"})
    assert sent["body"]["createdAt"] == "2025-11-26T10:52:39.123Z"


@pytest.mark.parametrize(
    ("created_at", "expected"),
    [
        (dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=dt.timezone.utc), "2026-01-02T03:04:05.678Z"),
        (dt.datetime(2026, 1, 2, 3, 4, 5), "2026-01-02T03:04:05.000Z"),  # naive means UTC
        (dt.datetime(2026, 1, 2, 8, 34, 5, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
         "2026-01-02T03:04:05.000Z"),
        ("2026-01-02T03:04:05.678Z", "2026-01-02T03:04:05.678Z"),
        ("2026-01-02T08:34:05+05:30", "2026-01-02T03:04:05.000Z"),
    ],
)
def test_created_at_from_tag(logger: logging.Logger, server: MockInteraktServer,
                             make_handler: Callable[..., InteraktHandler], created_at: Any,
                             expected: str) -> None:
    sent = _send(logger, server, make_handler(), "interakt_user",
                 {"user_id": "1", "created_at": created_at})
    assert sent["body"]["createdAt"] == expected


@dataclasses.dataclass
class Address:
    city: str
    pin: int


def test_rich_trait_types(logger: logging.Logger, server: MockInteraktServer,
                          make_handler: Callable[..., InteraktHandler]) -> None:
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    traits = {
        "dob": dt.date(1990, 5, 17),
        "seen": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc),
        "id": ident,
        "total": decimal.Decimal("199.95"),
        "count": decimal.Decimal("3"),
        "address": Address("Pune", 411001),
        "tags": ("a", "b"),
    }
    sent = _send(logger, server, make_handler(), "interakt_user", {"user_id": "1", "traits": traits})
    assert sent["body"]["traits"] == {
        "dob": "1990-05-17",
        "seen": "2026-01-02T03:04:05Z",
        "id": str(ident),
        "total": 199.95,
        "count": 3,
        "address": {"city": "Pune", "pin": 411001},
        "tags": ["a", "b"],
    }


def test_traits_are_copied_at_the_call(logger: logging.Logger, server: MockInteraktServer,
                                       make_handler: Callable[..., InteraktHandler]) -> None:
    server.hang = False
    traits: dict[str, Any] = {"items": ["a"], "total": 1}
    handler = make_handler()
    logger.addHandler(handler)
    logger.info("Order Placed", extra={"interakt_event": {"user_id": "1", "traits": traits}})
    traits["total"] = 2
    traits["items"].append("b")
    (request,) = server.wait_for(1)
    assert request.body["traits"] == {"items": ["a"], "total": 1}


def test_host_trailing_slash_is_dropped(logger: logging.Logger, server: MockInteraktServer,
                                        make_handler: Callable[..., InteraktHandler]) -> None:
    sent = _send(logger, server, make_handler(host=server.url + "/"), "interakt_user",
                 {"user_id": "1"})
    assert sent["path"] == USERS


def test_message_args_make_the_event_name(logger: logging.Logger, server: MockInteraktServer,
                                          make_handler: Callable[..., InteraktHandler]) -> None:
    logger.addHandler(make_handler())
    logger.info("Order %s", "Placed", extra={"interakt_event": {"user_id": "1"}})
    (request,) = server.wait_for(1)
    assert request.body["event"] == "Order Placed"
