"""Real servers, started and stopped as deployments do: what the app queued is delivered, or
reported with a count, however the server stops its processes. Each server listens on a socket
this test bound on 127.0.0.1 (handed over as a file descriptor: no port race) and is killed, with
its whole process group, in ``finally``."""

from __future__ import annotations

import contextlib
import http.client
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from interakt_logging.testing import MockInteraktServer, wait_until

from .conftest import API_KEY

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"

pytestmark = pytest.mark.slow

WSGI_APP = """
import logging
log = logging.getLogger("shop")
def app(environ, start_response):
    user = environ["QUERY_STRING"].partition("=")[2]
    log.info("Page Viewed", extra={"interakt_event": {"user_id": user}})
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
"""


@contextlib.contextmanager
def listening_socket() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.set_inheritable(True)
    with sock:
        yield sock


@contextlib.contextmanager
def running(command: list[str], *, cwd: pathlib.Path, env: dict[str, str],
            pass_fds: tuple[int, ...] = (), stdin: int = subprocess.DEVNULL,
            ) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``command`` in its own session, its output in ``cwd / "output.txt"``; kill the whole
    process group on the way out, whatever happened."""
    with open(cwd / "output.txt", "wb") as output:
        proc = subprocess.Popen(
            command, cwd=cwd, env={**os.environ, "INTERAKT_API_KEY": API_KEY, **env},
            stdin=stdin, stdout=output, stderr=subprocess.STDOUT,
            pass_fds=pass_fds, start_new_session=True,
        )
        try:
            yield proc
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def output_of(cwd: pathlib.Path) -> str:
    return (cwd / "output.txt").read_text(errors="replace")


def get(port: int, path: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def stop(proc: subprocess.Popen[bytes], sig: int, cwd: pathlib.Path, timeout: float = 60) -> int:
    proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {timeout}s after signal {sig}:\n{output_of(cwd)}")


def user_ids(server: MockInteraktServer) -> list[str]:
    return sorted(r.body["userId"] for r in server.delivered)


ASGI_APP = """
import logging
from interakt_logging import InteraktHandler

log = logging.getLogger("shop")
log.setLevel(logging.INFO)
log.addHandler(InteraktHandler())  # built when uvicorn imports this module

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    user = scope["query_string"].decode().partition("=")[2]
    log.info("Page Viewed", extra={"interakt_event": {"user_id": user}})
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})
"""

UVICORN_RUN = """
import sys
import uvicorn
from shop_asgi import app  # the handler is built here, before uvicorn takes over SIGTERM

uvicorn.run(app, fd=int(sys.argv[1]), log_level="warning")
"""


@pytest.mark.parametrize("started", ["cli", "uvicorn.run"])
def test_uvicorn_stopped_by_sigterm_delivers_what_was_queued(
    started: str, tmp_path: pathlib.Path
) -> None:
    """uvicorn ends by raising SIGTERM again with the default action, after its graceful
    shutdown: no atexit hook runs. 300 requests against a 50 ms API, then SIGTERM."""
    (tmp_path / "shop_asgi.py").write_text(textwrap.dedent(ASGI_APP))
    (tmp_path / "run.py").write_text(textwrap.dedent(UVICORN_RUN))
    with MockInteraktServer(latency=0.05) as server, listening_socket() as sock:
        fd = str(sock.fileno())
        command = {
            "cli": [sys.executable, "-m", "uvicorn", "shop_asgi:app", "--fd", fd,
                    "--log-level", "warning"],
            "uvicorn.run": [sys.executable, "run.py", fd],
        }[started]
        with running(command, cwd=tmp_path, env={"INTERAKT_HOST": server.url},
                     pass_fds=(sock.fileno(),)) as proc:
            port = sock.getsockname()[1]
            assert [get(port, f"/?user={i}") for i in range(300)] == [200] * 300
            assert stop(proc, signal.SIGTERM, tmp_path) == -signal.SIGTERM, output_of(tmp_path)
        assert user_ids(server) == sorted(map(str, range(300))), output_of(tmp_path)


POOL = """
import logging, multiprocessing, os, sys, warnings
from interakt_logging import InteraktHandler

warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads
log = logging.getLogger("shop")
log.setLevel(logging.INFO)
log.addHandler(InteraktHandler())

def work(i):
    log.info("Order Placed", extra={"interakt_event": {"user_id": str(i)}})
    return os.getpid()

if __name__ == "__main__":
    with multiprocessing.get_context("fork").Pool(2, maxtasksperchild=MAX_TASKS) as pool:
        pids = pool.map(work, range(100), chunksize=1)
        if sys.argv[1] == "close":
            pool.close()
            pool.join()
    # else: the with block ends in terminate(): SIGTERM to each worker
    print("workers", len(set(pids)))
"""


@pytest.mark.parametrize(("ending", "max_tasks"), [("close", 5), ("terminate", 60)])
def test_a_multiprocessing_pool_delivers_what_its_workers_queued(
    ending: str, max_tasks: int, tmp_path: pathlib.Path
) -> None:
    """Workers recycled by maxtasksperchild leave through os._exit (no atexit); a Pool left by
    its with block is terminate()d: SIGTERM, default action, to every worker still there."""
    (tmp_path / "pool.py").write_text(textwrap.dedent(POOL).replace("MAX_TASKS", str(max_tasks)))
    with MockInteraktServer(latency=0.05) as server:
        with running([sys.executable, "pool.py", ending], cwd=tmp_path,
                     env={"INTERAKT_HOST": server.url}) as proc:
            assert proc.wait(120) == 0, output_of(tmp_path)
        workers = re.search(r"workers (\d+)", output_of(tmp_path))
        assert workers, output_of(tmp_path)
        assert int(workers.group(1)) >= 20 if ending == "close" else int(workers.group(1)) == 2
        assert user_ids(server) == sorted(map(str, range(100))), output_of(tmp_path)


RELOADER_CHILD = """
import logging, socket, sys
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer
from interakt_logging import InteraktHandler
from shop_app import app

logging.getLogger("shop").setLevel(logging.INFO)
logging.getLogger("shop").addHandler(InteraktHandler())

class Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass

class Inherited(WSGIServer):
    def server_bind(self):  # the parent's listening socket, as a reloader hands it on
        self.socket.close()
        self.socket = socket.socket(fileno=int(sys.argv[1]))
        self.server_name, self.server_port = self.socket.getsockname()[:2]
        self.setup_environ()

    def server_activate(self):
        pass

server = Inherited(("127.0.0.1", 0), Quiet)
server.set_app(app)
server.serve_forever()
"""

RELOADER_PARENT = """
import signal, subprocess, sys
child = subprocess.Popen([sys.executable, "child.py", sys.argv[1]], pass_fds=(int(sys.argv[1]),))
sys.stdin.readline()  # the code changed, or Ctrl-C: stop the serving child
child.send_signal(signal.SIGTERM)
print("child exit", child.wait(60), flush=True)
"""


def test_a_reloader_parent_that_sigterms_its_serving_child(
    server: MockInteraktServer, tmp_path: pathlib.Path
) -> None:
    """Like Django's runserver autoreloader: the app serves in a child process that the parent
    stops with SIGTERM (default action in the child) and waits for."""
    (tmp_path / "shop_app.py").write_text(textwrap.dedent(WSGI_APP))
    (tmp_path / "child.py").write_text(textwrap.dedent(RELOADER_CHILD))
    (tmp_path / "parent.py").write_text(textwrap.dedent(RELOADER_PARENT))
    server.latency = 0.05
    with listening_socket() as sock, running(
        [sys.executable, "parent.py", str(sock.fileno())], cwd=tmp_path,
        env={"INTERAKT_HOST": server.url}, pass_fds=(sock.fileno(),), stdin=subprocess.PIPE,
    ) as proc:
        port = sock.getsockname()[1]
        assert [get(port, f"/?user={i}") for i in range(100)] == [200] * 100
        assert proc.stdin is not None
        proc.stdin.write(b"\n")
        proc.stdin.close()
        assert proc.wait(60) == 0, output_of(tmp_path)
    assert f"child exit {-signal.SIGTERM}" in output_of(tmp_path), output_of(tmp_path)
    assert user_ids(server) == sorted(map(str, range(100))), output_of(tmp_path)


DJANGO_SETTINGS = """
SECRET_KEY = "tests-only"
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1"]
ROOT_URLCONF = "shop_urls"
INSTALLED_APPS = []
DATABASES = {}
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"interakt": {"()": "interakt_logging.InteraktHandler"}},
    "loggers": {"shop": {"handlers": ["interakt"], "level": "INFO"}},
}
"""

DJANGO_URLS = """
import logging
from django.http import HttpResponse
from django.urls import path

def view(request):
    logging.getLogger("shop").info(
        "Page Viewed", extra={"interakt_event": {"user_id": request.GET["user"]}})
    return HttpResponse("ok")

urlpatterns = [path("", view)]
"""


def free_port() -> int:
    """For a server that binds its own port (runserver): a port free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize(("reload", "stop_with"), [
    (True, "ctrl-c"), (False, "ctrl-c"), (False, "sigterm"),
], ids=["autoreload-ctrl-c", "noreload-ctrl-c", "noreload-sigterm"])
def test_django_runserver_stopped_delivers_or_counts(
    reload: bool, stop_with: str, tmp_path: pathlib.Path
) -> None:
    """Ctrl-C reaches runserver's autoreloader and its serving child; the autoreloader SIGKILLs
    the child 0.25 s later. Whatever that cuts short was counted on stderr first. Without the
    autoreloader, Ctrl-C and SIGTERM (docker stop) deliver everything."""
    pytest.importorskip("django")
    (tmp_path / "shop_settings.py").write_text(textwrap.dedent(DJANGO_SETTINGS))
    (tmp_path / "shop_urls.py").write_text(textwrap.dedent(DJANGO_URLS))
    port = free_port()
    command = [sys.executable, "-m", "django", "runserver", f"127.0.0.1:{port}"]
    with MockInteraktServer(latency=0.2) as server, running(
        command + ([] if reload else ["--noreload"]), cwd=tmp_path,
        env={"INTERAKT_HOST": server.url, "PYTHONPATH": str(tmp_path),
             "DJANGO_SETTINGS_MODULE": "shop_settings"},
    ) as proc:
        wait_until(lambda: _answers(port), lambda: f"runserver is not up:\n{output_of(tmp_path)}")
        assert [get(port, f"/?user={i}") for i in range(100)] == [200] * 100
        if stop_with == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        else:
            proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    output = output_of(tmp_path)
    delivered = [u for u in user_ids(server) if u != "up"]
    if not reload:
        assert delivered == sorted(map(str, range(100))), output
        return
    counted = re.search(r"interakt-logging: delivering (\d+) queued payload", output)
    lost = 100 - len(delivered)
    assert lost == 0 or (counted and int(counted.group(1)) >= lost), output


def _answers(port: int) -> bool:
    try:
        return get(port, "/?user=up") == 200
    except OSError:
        return False


CELERY_WORKER = """
import logging
from celery import Celery, signals
from interakt_logging import InteraktHandler

app = Celery("shop", broker="memory://")
app.conf.broker_connection_retry_on_startup = True
interakt = InteraktHandler()  # nothing else: no worker_process_shutdown hook of our own

@signals.after_setup_logger.connect
def add_interakt(logger, **kwargs):
    logging.getLogger("shop").addHandler(interakt)
    logging.getLogger("shop").setLevel(logging.INFO)

@app.task
def place_order(user_id):
    logging.getLogger("shop").info(
        "Order Placed", extra={"interakt_event": {"user_id": user_id}})

@signals.worker_ready.connect
def enqueue(**kwargs):  # the in-memory broker lives in this process: publish from here
    for i in range(100):
        place_order.delay(str(i))

app.worker_main(["worker", "--pool=prefork", "--concurrency=2", "--max-tasks-per-child=10",
                 "--loglevel=INFO", "--without-heartbeat", "--without-mingle", "--without-gossip"])
"""


def test_celery_prefork_with_max_tasks_per_child_delivers_every_task(
    tmp_path: pathlib.Path,
) -> None:
    """Pool children recycled after 10 tasks, then the worker's warm shutdown: every child
    leaves through os._exit() after worker_process_shutdown, which the handler hooked itself."""
    pytest.importorskip("celery")
    (tmp_path / "worker.py").write_text(textwrap.dedent(CELERY_WORKER))
    with MockInteraktServer(latency=0.2) as server, running(
        [sys.executable, "worker.py"], cwd=tmp_path, env={"INTERAKT_HOST": server.url},
    ) as proc:
        wait_until(lambda: output_of(tmp_path).count(" succeeded in ") >= 100,
                   lambda: f"the tasks did not all run:\n{output_of(tmp_path)}", timeout=60)
        assert stop(proc, signal.SIGTERM, tmp_path) == 0, output_of(tmp_path)
    assert user_ids(server) == sorted(map(str, range(100))), output_of(tmp_path)


def test_gunicorn_with_the_example_config_delivers_every_request(
    server: MockInteraktServer, tmp_path: pathlib.Path
) -> None:
    (tmp_path / "shop_app.py").write_text(textwrap.dedent(WSGI_APP))
    config = EXAMPLES / "gunicorn" / "gunicorn.conf.py"
    with listening_socket() as sock, running(
        [sys.executable, "-m", "gunicorn", "-c", str(config), "--bind", f"fd://{sock.fileno()}",
         "shop_app:app"],
        cwd=tmp_path, env={"INTERAKT_HOST": server.url}, pass_fds=(sock.fileno(),),
    ) as proc:
        port = sock.getsockname()[1]
        statuses = [get(port, f"/?user={i}") for i in range(50)]
        assert statuses == [200] * 50, output_of(tmp_path)
        assert stop(proc, signal.SIGTERM, tmp_path) == 0, output_of(tmp_path)
    output = output_of(tmp_path)
    booted = {line.rsplit(" ", 1)[1] for line in output.splitlines() if "Booting worker" in line}
    assert len(booted) == 2, output  # (gunicorn's default config prints its lines twice)
    assert user_ids(server) == sorted(map(str, range(50))), output
