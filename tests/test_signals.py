"""The signals `python -m pruning run | search | serve | bench` passes on to the process it starts (pruning/cli.py
``_flows``; docs/orchestration.md "Signals"), in a real terminal: an interactive bash on a pseudo-terminal, its job
control on, as a user types the command. The child here is a stand-in benchmark that counts the interrupts it gets,
so each way of interrupting is checked to arrive exactly once; the flow's own answer to them (Crashed, exit 130) is
tests/e2e/test_flow_states.py's."""

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and a pty with job control")

SLEEPER = """
import os, signal, sys, time
got = []
signal.signal(signal.SIGINT, lambda n, f: got.append(n))
open(sys.argv[1] + ".tmp", "w").write(str(os.getpid()))
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
while not got:
    time.sleep(0.02)
time.sleep(1.0)  # a second delivery of the same interrupt would arrive within this
open(sys.argv[2], "w").write(f"interrupts {len(got)}")
sys.exit(130)
"""


class Terminal:
    """bash -i on a pseudo-terminal that is its controlling terminal; what it prints is collected."""

    def __init__(self, cwd: Path) -> None:
        import fcntl
        import termios

        # the benchmark is the working directory's bench/ (as for a user in their repository): no PYTHONPATH naming
        # another bench package ahead of it
        env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PS1": "$ "}
        master, slave = os.openpty()
        self.master, self.out = master, b""
        self.bash = subprocess.Popen(["bash", "--norc", "--noprofile", "-i"], stdin=slave, stdout=slave, stderr=slave,
                                     cwd=cwd, start_new_session=True, env=env,
                                     preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))  # noqa: PLW1509
        os.close(slave)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 4096)
            except OSError:
                return
            if not chunk:
                return
            self.out += chunk

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def close(self) -> None:
        self.bash.kill()
        self.bash.wait()
        os.close(self.master)


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _wait(predicate, what: str, terminal: Terminal, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {terminal.out.decode(errors='replace')}"
        time.sleep(0.05)


def test_ctrl_c_ctrl_z_and_kill_reach_the_started_process_exactly_once(tmp_path):
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "sleeper.py").write_text(textwrap.dedent(SLEEPER))
    terminal = Terminal(tmp_path)
    try:
        for n, how in enumerate(["Ctrl-C", "kill -INT <pid>", "kill -INT -<pgid>"]):
            assert _interrupted(terminal, tmp_path, n, how) == (1, b"130"), how
    finally:
        terminal.close()


def _interrupted(terminal: Terminal, tmp_path: Path, n: int, how: str) -> tuple[int, bytes]:
    """Type the command, interrupt it ``how``: (the interrupts the benchmark got, the command's exit status)."""
    pid_file, result = tmp_path / f"pid{n}", tmp_path / f"result{n}"
    terminal.type(f"{sys.executable} -m pruning bench sleeper {pid_file} {result}\n".encode())
    _wait(pid_file.is_file, "the benchmark to start", terminal)
    child = int(pid_file.read_text())
    command = int(_state(child)[1])  # its parent: `python -m pruning bench`
    if how == "Ctrl-C":  # and Ctrl-Z first: both stop, the shell's prompt is back; `fg` resumes both
        terminal.type(b"\x1a")
        _wait(lambda: _state(command)[0] == "T" and _state(child)[0] == "T", "both to stop", terminal)
        _wait(lambda: b"Stopped" in terminal.out, "the shell to say so", terminal)
        terminal.type(b"fg\n")
        _wait(lambda: "T" not in (_state(command)[0], _state(child)[0]), "both to resume", terminal)
        terminal.type(b"\x03")  # the terminal's SIGINT to its foreground process group: the command
    elif how == "kill -INT <pid>":
        os.kill(command, signal.SIGINT)
    else:
        os.killpg(os.getpgid(command), signal.SIGINT)
    _wait(result.is_file, f"the benchmark to act on {how}", terminal)
    _wait(lambda: not Path(f"/proc/{command}").exists(), "the command to exit", terminal)
    terminal.type(f"echo rc{n}=$?\n".encode())  # after Ctrl-Z, `fg`'s status: the job's
    _wait(lambda: re.search(rf"rc{n}=(\d+)".encode(), terminal.out), "the command's exit status", terminal)
    return int(result.read_text().split()[1]), re.search(rf"rc{n}=(\d+)".encode(), terminal.out).group(1)
