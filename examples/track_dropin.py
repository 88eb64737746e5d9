"""Migrating from interakt-track-python: change one import line.

    - import track
    + from interakt_logging import track

    python examples/track_dropin.py

Same settings, same functions, same return values; calls share the logging handler's queue and
sender (several requests in flight, retries, a bounded exit), and bad arguments raise
ValidationError naming the field instead of a bare AssertionError.
"""

from __future__ import annotations

from _common import interakt_target

from interakt_logging import ValidationError, track


def main() -> None:
    # track.api_key = "..."   # or INTERAKT_API_KEY in the environment, as here
    ok, queued = track.user(user_id="u1", traits={"name": "Asha", "plan": "pro"})
    print("user queued:", ok, queued["path"])
    track.event(user_id="u1", event="Order Placed", traits={"orderNumber": "CUS001"},
                country_code="+91", phone_number="9999999999")
    try:
        track.event(user_id="u1", event="")
    except ValidationError as error:
        print("refused at the call:", error)
    track.shutdown()  # deliver what is queued; a later call would start a new client


if __name__ == "__main__":
    with interakt_target():
        main()
