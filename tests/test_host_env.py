"""INTERAKT_HOST: the default host, so config files and snippets can point at a mock."""

from __future__ import annotations

import logging

import pytest

from interakt_logging import InteraktHandler, ValidationError
from interakt_logging.testing import MockInteraktServer


def test_argument_then_environment_then_default(
    monkeypatch: pytest.MonkeyPatch, server: MockInteraktServer, logger: logging.Logger
) -> None:
    monkeypatch.delenv("INTERAKT_HOST", raising=False)
    assert InteraktHandler().settings.host == "https://api.interakt.ai"
    monkeypatch.setenv("INTERAKT_HOST", "")
    assert InteraktHandler().settings.host == "https://api.interakt.ai"
    monkeypatch.setenv("INTERAKT_HOST", server.url + "/")
    assert InteraktHandler(host="https://eu.example.com").settings.host == "https://eu.example.com"
    handler = InteraktHandler(sync_mode=True)
    assert handler.settings.host == server.url
    logger.addHandler(handler)
    logger.info("Order Placed", extra={"interakt_event": {"user_id": "1"}})
    assert [b["event"] for b in server.events()] == ["Order Placed"]


def test_a_bad_environment_host_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTERAKT_HOST", "http://api.interakt.ai")
    with pytest.raises(ValidationError) as info:
        InteraktHandler()
    assert info.value.field == "INTERAKT_HOST"
    assert "loopback" in str(info.value)
