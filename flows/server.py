"""Prefect's ephemeral API server, launched before this process imports the stages.

Why not leave it to Prefect: with no PREFECT_API_URL, Prefect starts the same server (``SubprocessASGIServer``) the
first time a client is needed, and only after the client process has imported the whole server application — the
server then takes seconds to come up, all in front of the first stage (docs/design.md, "Measured reasons"). Launched
here, it comes up on the other core while this process imports torch and the stages; the flow then talks to it as to
any server, through PREFECT_API_URL (bench/overhead.py measures the difference). The command line, environment and lifetime are
Prefect's own (``prefect.server.api.server.SubprocessASGIServer._run_uvicorn_command``); the server stops at exit.
A PREFECT_API_URL that is set (a real server) or PREFECT_SERVER_EPHEMERAL_ENABLED=false leaves everything to Prefect.
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import time
from contextlib import closing

import prefect
from prefect.context import refresh_global_settings_context
from prefect.settings import get_current_settings

from pruning.cli import die_with_parent


class ServerFailed(RuntimeError):
    """The ephemeral server did not come up; the message says why."""


def launch() -> subprocess.Popen[bytes] | None:
    """Start the ephemeral server and point this process (and its children) at it; None if one is not wanted.

    Returns at once: call :func:`wait` before the first API call.
    """
    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        return None
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1",
           **settings.to_environment_variables(exclude_unset=True)}
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent), "--factory",
         "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port), "--log-level", "error",
         "--lifespan", "on"], env=env, preexec_fn=die_with_parent,  # noqa: PLW1509 - it must not outlive this process
        # Its own process group: a Ctrl-C at the terminal goes to the foreground group, and a server in it would shut
        # down at once, before the interrupted flow run could report its Crashed state to it (left "Running" forever).
        # It stops after that report instead: at this process's exit (atexit, below) or with it (die_with_parent).
        process_group=0)
    atexit.register(_stop, process)
    os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
    refresh_global_settings_context()  # Prefect's settings, in every thread, now see the URL
    return process


def wait(process: subprocess.Popen[bytes]) -> None:
    """Block until the server answers /health (Prefect's own start-up timeout applies)."""
    import httpx

    settings = get_current_settings()
    url, timeout = f"{settings.api.url}/health", settings.server.ephemeral.startup_timeout_seconds
    if "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" not in os.environ:
        # Prefect's 20 s default is too short on a busy 2-core machine (a CI run with training beside it missed it);
        # a server that is not coming still fails, with the same message, after 90 s
        timeout = max(timeout, 90)
    deadline = time.monotonic() + timeout
    with httpx.Client() as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise ServerFailed(f"the ephemeral Prefect server exited with code {process.returncode}; "
                                   "start one with `prefect server start` and set PREFECT_API_URL")
            try:
                if client.get(url).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
    raise ServerFailed(f"the ephemeral Prefect server did not answer within {timeout} s "
                       "(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
