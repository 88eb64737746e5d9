"""The ``interakt_capture`` fixture, as a user's test suite sees it (through the entry point)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow  # runs pytest in a process

pytest_plugins = ["pytester"]


def test_fixture_from_the_entry_point(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_app="""
        import logging
        from interakt_logging import InteraktHandler
        from interakt_logging import _pipeline

        log = logging.getLogger("app")
        log.setLevel(logging.INFO)

        def checkout():
            log.info("Order Placed", extra={"interakt_event": {
                "user_id": "42", "traits": {"orderNumber": "CUS001"}}})

        def test_checkout(interakt_capture, monkeypatch):
            monkeypatch.delenv("INTERAKT_API_KEY", raising=False)
            handler = InteraktHandler()
            log.addHandler(handler)
            try:
                checkout()
            finally:
                log.removeHandler(handler)
            (event,) = interakt_capture.events("Order Placed")
            assert event.traits == {"orderNumber": "CUS001"}
            assert event.body["userId"] == "42"

        def test_fresh_per_test(interakt_capture):
            assert len(interakt_capture) == 0
            assert len(_pipeline.interceptors) == 1

        def test_removed_after():
            assert _pipeline.interceptors == []
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
