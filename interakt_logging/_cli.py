"""The ``interakt-logging`` command line (also ``python -m interakt_logging``).

``demo`` shows the whole path from a log call to the API; ``send-user`` / ``send-event`` make one
synchronous call (the quickest way to check a key); ``mock-server`` runs the loopback Track API
for trying an application by hand; ``outbox`` inspects and maintains a durable outbox file.
Exit codes: 0 success, 1 the API refused or could not be reached, 2 bad input.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import orjson

from ._errors import APIError, InteraktError, ValidationError
from ._handler import InteraktHandler
from ._mock_server import MockInteraktServer, RecordedRequest, Reply
from ._outbox import OutboxCensus, census, purge
from ._payload import EVENTS_PATH, USERS_PATH, Payload, format_created
from ._settings import API_KEY_ENV, HOST_ENV, require_api_key
from ._version import __version__

PROG = "interakt-logging"

# What a ValidationError's field is called on the command line.
_OPTION_FOR_FIELD = {
    "user_id": "--user-id",
    "phone_number": "--phone",
    "country_code": "--country-code",
    "traits": "--traits",
    "event": "NAME",
    "created_at": "--created-at",
    "host": "--host",
    "timeout": "--timeout",
    "max_retries": "--max-retries",
    "api_key": f"environment variable {API_KEY_ENV}",
    "outbox": "PATH",
}

Command = Callable[[argparse.Namespace], int]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    args = _parser().parse_args(argv)
    if getattr(args, "debug", False):
        logging.basicConfig(level=logging.DEBUG, format="%(name)s %(levelname)s %(message)s")
    command: Command = args.command
    try:
        with _failures_told_once(getattr(args, "debug", False)):
            return command(args)
    except ValidationError as exc:
        option = _OPTION_FOR_FIELD.get(exc.field.split(".")[0].split("[")[0])
        where = f" (option {option})" if option else ""
        print(f"{PROG}: error: {exc}{where}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the output was piped into `head` or the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


@contextlib.contextmanager
def _failures_told_once(debug: bool) -> Iterator[None]:
    """Every command prints the failures it meets itself (and exits 1 or 2), after the handler
    has reported them as it does everywhere; its warning on the ``interakt_logging`` logger
    would say each a second time. So that logger's warnings show with --debug only (with the
    rest of the library's log), its errors (a fault, a bug) always."""
    if debug:
        yield
        return
    library = logging.getLogger("interakt_logging")
    errors_only = logging.StreamHandler(sys.stderr)
    errors_only.setLevel(logging.ERROR)
    library.addHandler(errors_only)
    try:
        yield
    finally:
        library.removeHandler(errors_only)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Send Interakt Track API calls, try the library, run a mock API.",
        epilog=f"The API key comes from {API_KEY_ENV} (the decoded key or the dashboard's "
        f"Secret Key as shown); {HOST_ENV} overrides the default host.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    demo = sub.add_parser(
        "demo", help="log a user and an event through InteraktHandler and show what was sent",
        description=f"Configure logging with an InteraktHandler, log a user and an 'Order Placed' "
        f"event, flush, and show the result. Without {API_KEY_ENV} a loopback mock Track API "
        f"receives the calls and the demo prints them; with a key they go to the real API "
        f"({HOST_ENV} or https://api.interakt.ai) and the demo prints the handler's stats.",
    )
    demo.add_argument("--user-id", default="interakt-logging-demo", metavar="ID",
                      help="the user id to send (default: %(default)s)")
    _add_debug(demo)
    demo.set_defaults(command=_demo)

    for kind in ("user", "event"):
        send = sub.add_parser(
            f"send-{kind}", help=f"send one {kind} track call now and print the API's answer",
            description=f"Send one {kind} track call synchronously and print the API's answer. "
            f"Exit 0 when accepted, 1 when refused or unreachable, 2 for bad input. The key "
            f"comes from {API_KEY_ENV}.",
        )
        if kind == "event":
            send.add_argument("name", metavar="NAME", help="the event name, e.g. 'Order Placed'")
        _add_call_options(send)
        send.set_defaults(command=_send_call, path=EVENTS_PATH if kind == "event" else USERS_PATH)

    mock = sub.add_parser(
        "mock-server", help="run a loopback mock Track API and print requests as they arrive",
        description=f"Run MockInteraktServer on 127.0.0.1 and print every request it receives "
        f"until Ctrl-C. Point an application at it with {HOST_ENV}=<the printed URL>.",
    )
    mock.add_argument("--port", type=int, default=8765, metavar="PORT",
                      help="port to listen on (default: %(default)s; 0 picks a free one)")
    mock.add_argument("--latency", type=float, default=0.0, metavar="SECONDS",
                      help="seconds to wait before every answer (default: %(default)s)")
    mock.add_argument("--status", type=int, default=200, metavar="CODE",
                      help="HTTP status to answer every request with (default: %(default)s)")
    mock.add_argument("--retry-after", default=None, metavar="VALUE",
                      help="a Retry-After header to add to every answer (e.g. with --status 429)")
    mock.set_defaults(command=_serve_mock_api)

    outbox = sub.add_parser(
        "outbox", help="inspect, deliver or empty a durable outbox file",
        description="Maintain the sqlite outbox that InteraktHandler(outbox=PATH) keeps.",
    )
    actions = outbox.add_subparsers(title="actions", metavar="ACTION", required=True)
    for action, text in _OUTBOX_ACTIONS.items():
        sub_action = actions.add_parser(action, help=text, description=text)
        sub_action.add_argument("path", metavar="PATH", help="the outbox file")
        if action == "replay":
            _add_delivery_options(sub_action, 60.0, "give up after this many seconds")
        if action == "purge":
            sub_action.add_argument("--yes", action="store_true",
                                    help="do it (without --yes, only say what would be deleted)")
        sub_action.set_defaults(command=_maintain_outbox, action=action)
    return parser


def _add_debug(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true",
                        help="log what the library does (requests, key form detected) to stderr")


def _add_delivery_options(parser: argparse.ArgumentParser, timeout: float, meaning: str) -> None:
    parser.add_argument("--host", default=None, metavar="URL",
                        help=f"API host (default: {HOST_ENV}, else https://api.interakt.ai)")
    parser.add_argument("--timeout", type=float, default=timeout, metavar="SECONDS",
                        help=f"{meaning} (default: %(default)s)")
    parser.add_argument("--max-retries", type=int, default=3, metavar="N",
                        help="retries on network errors, 5xx and 429 (default: %(default)s)")
    _add_debug(parser)


def _add_call_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--user-id", metavar="ID", help="the user's id")
    parser.add_argument("--phone", metavar="DIGITS",
                        help="phone number, digits only, without the country code")
    parser.add_argument("--country-code", default="+91", metavar="+CODE",
                        help="calling code of --phone (default: %(default)s)")
    parser.add_argument("--traits", default=None, metavar="JSON",
                        help='traits as a JSON object, e.g. \'{"name": "John"}\'')
    parser.add_argument("--created-at", default=None, metavar="ISO8601",
                        help="when it happened (default: now)")
    _add_delivery_options(parser, 10.0, "seconds per attempt")


# -- demo ----------------------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    if os.environ.get(API_KEY_ENV, "").strip():
        return _demo_live(args)
    with MockInteraktServer() as server:
        print(f"No {API_KEY_ENV} is set, so a mock Track API runs on {server.url}.")
        print(f"(Set {API_KEY_ENV} to send to the real API instead.)\n")
        handler = InteraktHandler(api_key="demo", host=server.url, debug=args.debug)
        delivered = _demo_log(handler, f'InteraktHandler(api_key="demo", host="{server.url}")',
                              args.user_id)
        print(f"\nThe mock server received {len(server.requests)} request(s):\n")
        for request in server.requests:
            print(describe_request(request))
    return 0 if delivered else 1


def _demo_live(args: argparse.Namespace) -> int:
    errors: List[str] = []
    handler = InteraktHandler(on_error=lambda error, payload: errors.append(str(error)),
                              debug=args.debug)
    print(f"{API_KEY_ENV} is set: sending to {handler.settings.host}.\n")
    delivered = _demo_log(handler, f"InteraktHandler()  # key from {API_KEY_ENV}", args.user_id)
    stats = handler.stats()
    print("\nhandler.stats(): " + ", ".join(f"{k}={v}" for k, v in stats.items()))
    for error in errors:
        print(f"error: {error}")
    if delivered and not errors:
        print(f"\nBoth calls were accepted: look for user {args.user_id!r} in your dashboard.")
        return 0
    return 1


def _demo_log(handler: InteraktHandler, construction: str, user_id: str) -> bool:
    """Log the demo's two records through ``handler``, printing the code that does it; True
    when both were delivered."""
    log = logging.getLogger("shop")
    log.setLevel(logging.INFO)
    log.propagate = False
    log.addHandler(handler)
    calls: List[Tuple[str, str, Dict[str, Any]]] = [
        ("Signed Up", "interakt_user", {
            "user_id": user_id, "traits": {"name": "John", "plan": "trial"},
        }),
        ("Order Placed", "interakt_event", {
            "user_id": user_id, "traits": {"orderNumber": "CUS001", "total": 499.0},
        }),
    ]
    print(f"handler = {construction}")
    print('log = logging.getLogger("shop")')
    print("log.addHandler(handler)")
    try:
        for message, tag, value in calls:
            print(f"log.info({message!r}, extra={{{tag!r}: {value!r}}})")
            log.info(message, extra={tag: value})
        print("handler.flush()")
        handler.flush(30)
    finally:
        log.removeHandler(handler)
        handler.close()
    return bool(handler.stats()["sent"] == len(calls))


# -- send-user / send-event ------------------------------------------------------------------------


def _send_call(args: argparse.Namespace) -> int:
    """One call through ``InteraktHandler.submit`` in sync mode: the request and the answer on
    stdout, a failure on stderr (it was reported by the handler first, as any call's is)."""
    require_api_key(None)
    tag = {"user_id": args.user_id, "phone_number": args.phone, "country_code": args.country_code,
           "traits": _parse_traits(args.traits), "created_at": args.created_at}
    if args.path == EVENTS_PATH:
        tag["event"] = args.name
    sent: List[Any] = []  # what on_error was given with a failed call: the request as sent

    def keep_request(error: Exception, message: Any) -> None:
        sent.append(message)

    handler = InteraktHandler(host=args.host, sync_mode=True, debug=args.debug,
                              timeout=args.timeout, max_retries=args.max_retries,
                              on_error=keep_request)
    try:
        submitted = handler.submit(args.path, tag)
    except ValidationError:
        raise  # main names the option
    except InteraktError as exc:
        if sent:
            _print_request(handler, sent[0])
        print(f"{PROG}: {_failure(exc)}", file=sys.stderr)
        return 1
    finally:
        handler.close()
    request = Payload(submitted.path, submitted.body, submitted.created)
    _print_request(handler, request.on_error_arg())
    print(f"-> {_pretty_json(submitted.answer)}")
    return 0


def _print_request(handler: InteraktHandler, message: Dict[str, Any]) -> None:
    print(f"POST {handler.settings.host}{message['path']}")
    print(_pretty_json(message["body"]))


def _failure(error: InteraktError) -> str:
    if isinstance(error, APIError):
        return f"refused: HTTP {error.status_code}: {error.message}"
    return f"not delivered: {error}"


def _parse_traits(text: Optional[str]) -> Optional[Dict[str, Any]]:
    if text is None:
        return None
    expected = 'a JSON object, e.g. \'{"name": "John"}\''
    try:
        traits = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ValidationError("traits", text, expected) from None
    if not isinstance(traits, dict):
        raise ValidationError("traits", text, expected)
    return traits


# -- mock-server -----------------------------------------------------------------------------------


def _serve_mock_api(args: argparse.Namespace) -> int:
    lock = threading.Lock()

    def show(request: RecordedRequest) -> None:
        with lock:
            print(describe_request(request), flush=True)

    reply = Reply(args.status, retry_after=args.retry_after)
    try:
        server = MockInteraktServer(latency=args.latency, port=args.port, on_request=show,
                                    responder=None if args.status == 200 else lambda r: reply)
    except OSError as exc:
        print(f"{PROG}: cannot listen on port {args.port}: {exc.strerror}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with server:
        print(f"Mock Interakt Track API on {server.url} (Ctrl-C to stop). Point an app at it:")
        print(f"  export {HOST_ENV}={server.url} {API_KEY_ENV}=test\n", flush=True)
        while not stop.wait(0.5):
            pass
    print(f"\nStopped after {len(server.requests)} request(s).", flush=True)
    return 0


def describe_request(request: RecordedRequest) -> str:
    """A received request for people: method, path, status and the JSON body, indented."""
    body = _pretty_json(request.body) if request.body is not None else repr(request.raw)
    indented = "\n".join("  " + line for line in body.splitlines())
    return f"{request.method} {request.path} -> {request.status}\n{indented}\n"


def _pretty_json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()


# -- outbox ----------------------------------------------------------------------------------------

_OUTBOX_ACTIONS = {
    "stats": "show what waits in an outbox: payloads, bytes, the oldest, and who holds them",
    "replay": "deliver now what ended processes left in an outbox (key and host as for "
    "send-user)",
    "purge": "delete what ended processes left in an outbox (a running process's rows stay)",
}


def describe_census(path: str, census: OutboxCensus) -> str:
    """An outbox's census for people: what waits, whose it is, and what to do about it."""
    lines = [f"Outbox {path}: {census.total} payload(s)"]
    if census.total:
        oldest = format_created(census.oldest) if census.oldest is not None else "unknown"
        lines[0] += (f" ({census.users} user, {census.events} event calls), "
                     f"{census.size / 1024:.1f} KiB, the oldest from {oldest}")
    lines.append(f"  {census.left} left by ended processes (the next process that opens the "
                 f"outbox delivers them, or `{PROG} outbox replay`)")
    pids = ", ".join(str(pid) for pid in census.running) or "none"
    lines.append(f"  {census.held} held by running processes (pids: {pids})")
    if census.unusable:
        lines.append(f"  {census.unusable} corrupt (a time, path or body that cannot be sent): "
                     "reported and deleted when a process takes them")
    return "\n".join(lines)


def _maintain_outbox(args: argparse.Namespace) -> int:
    path = os.path.abspath(args.path)
    before = census(path)
    print(describe_census(path, before))
    if args.action == "stats":
        return 0
    if not before.left:
        print("Nothing was left by ended processes: nothing to do.")
        return 0
    if args.action == "replay":
        return _replay(path, args)
    if not args.yes:
        print(f"Would delete the {before.left} payload(s) left by ended processes; "
              "run again with --yes to delete them.")
        return 0
    print(f"Deleted {purge(path)} payload(s).")
    return 0


def _replay(path: str, args: argparse.Namespace) -> int:
    """Open the outbox as a sender does: it takes over what ended processes left and delivers
    it. What is not delivered in time stays in the file."""
    errors: Dict[str, int] = {}

    def count(error: Exception, payload: Any) -> None:
        errors[str(error)] = errors.get(str(error), 0) + 1

    handler = InteraktHandler(outbox=path, host=args.host, debug=args.debug,
                              max_retries=args.max_retries, on_error=count)
    print(f"Delivering to {handler.settings.host} ...")
    try:
        handler.flush(args.timeout)
    finally:
        handler.close(timeout=1.0)
    stats = handler.stats()
    print(f"Delivered {stats['sent']}, failed {stats['failed']} (retried {stats['retried']}).")
    for text, times in errors.items():
        print(f"  {times} x {text}")
    after = census(path)
    print(describe_census(path, after))
    return 0 if not stats["failed"] and not after.left else 1
