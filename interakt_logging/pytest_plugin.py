"""pytest plugin (registered through the ``pytest11`` entry point): the ``interakt_capture``
fixture. Loaded in every pytest run where interakt-logging is installed, so it imports the
library only when a test asks for the fixture."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

import pytest

if TYPE_CHECKING:
    from .testing import Captured


@pytest.fixture
def interakt_capture() -> Iterator[Captured]:
    """Every Interakt call the test makes, recorded instead of sent (see ``testing.capture``)::

        def test_checkout(interakt_capture):
            checkout(order)
            assert interakt_capture.events("Order Placed")[0].traits["orderNumber"] == "CUS001"

    Handlers built before the test (at import time, say) are captured too, but need some
    ``INTERAKT_API_KEY`` to be built at all.
    """
    from .testing import capture

    with capture() as captured:
        yield captured
