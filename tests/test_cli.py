import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from pruning.stages import STAGES
from tests.conftest import write_params

VERBS = [s.name for s in STAGES]


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "pruning", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"})


def test_help_lists_one_verb_per_stage_with_its_line_from_the_table(tmp_path):
    out = _cli("--help", cwd=tmp_path)
    assert out.returncode == 0
    for stage in STAGES:
        assert f"│ {stage.name} " in out.stdout and stage.help[:40] in out.stdout
    assert "--strict" in _cli("evaluate", "--help", cwd=tmp_path).stdout
    assert "--strict" not in _cli("train", "--help", cwd=tmp_path).stdout


def _invoke(*args: str):
    """The command line in this process (typer's runner): what `python -m pruning ARGS` does, without the start-up."""
    from typer.testing import CliRunner

    from pruning.cli import app

    return CliRunner().invoke(app, list(args), catch_exceptions=False)


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ({"prune": {"ratio": 1.5}}, 'Invalid "prune.ratio" in params.yaml: 1.5'),
        ({"prune": {"ratoi": 0.5}}, 'Unknown key "prune.ratoi" in params.yaml'),
        ({"data": {"source": "npz", "path": "nowhere.npz"}}, 'Invalid "data.path" in params.yaml'),
        ({"model": {"arch": "not_a_module:make"}}, 'Invalid "model.arch" in params.yaml'),
        ({"prune": {"method": "lottery", "ratio": 0.5}}, 'Unknown key "prune.ratio" in params.yaml'),
    ],
)
def test_every_verb_exits_2_with_one_line_and_writes_nothing_when_params_are_bad(in_tmp, override, needle):
    write_params(in_tmp, override)
    before = sorted(p.name for p in in_tmp.iterdir())
    for verb in VERBS:
        out = _invoke(verb)
        assert out.exit_code == 2, (verb, out.output)
        assert needle in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert "Traceback" not in out.output
    assert sorted(p.name for p in in_tmp.iterdir()) == before


def test_a_verb_s_own_process_exits_2_with_the_one_line_too(tmp_path):
    """The same as a process of its own (what DVC and a shell run): exit code, one line on stderr, nothing written."""
    write_params(tmp_path, {"prune": {"ratio": 1.5}})
    out = _cli("prune", cwd=tmp_path)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert lines[0].startswith('error: Invalid "prune.ratio" in params.yaml: 1.5') and "Traceback" not in out.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_a_stage_names_the_missing_input_when_run_out_of_order(in_tmp):
    write_params(in_tmp)
    out = _invoke("prune")
    assert out.exit_code == 2
    assert "data/meta.json not found: run the prepare stage first" in out.stderr


def test_a_missing_params_file_is_a_one_line_error(in_tmp):
    out = _invoke("train", "--params", "nope.yaml")
    assert out.exit_code == 2 and "Parameters file nope.yaml not found" in out.stderr


def test_a_library_error_is_reported_with_the_params_key_it_comes_from(trained_copy):
    write_params(trained_copy, {"prune": {"ignored_layers": ["layers.99"]}})
    out = _invoke("prune")
    assert out.exit_code == 2 and "Traceback" not in out.output
    assert 'Invalid "prune.ignored_layers": no layer named \'layers.99\' in the model' in out.stderr


def test_bench_runs_a_benchmark_of_bench_and_names_an_unknown_one(tmp_path):
    out = _cli("bench", "nothing_here", cwd=tmp_path)
    assert out.returncode == 2 and "no benchmark 'nothing_here'" in out.stderr
    from tests.conftest import REPO

    out = _cli("bench", "criteria", "--help", cwd=REPO)
    assert out.returncode == 0 and "--quick" in out.stdout


def test_help_shows_boolean_options_as_plain_flags_without_a_type(tmp_path):
    top = _cli("--help", cwd=tmp_path)
    evaluate = _cli("evaluate", "--help", cwd=tmp_path)
    assert top.returncode == evaluate.returncode == 0
    for out, flags in ((top.stdout, ("--verbose", "--help")), (evaluate.stdout, ("--strict", "--help"))):
        assert "<bool>" not in out and "BOOLEAN" not in out
        for flag in flags:
            (row,) = [ln for ln in out.splitlines() if f"│ {flag} " in ln]
            assert row.split(flag, 1)[1].split()[0] in {"-v", "Debug", "Exit", "Show"}, row  # no value after the flag
    assert "-v" in next(ln for ln in top.stdout.splitlines() if "--verbose" in ln)
    assert "<path>" in evaluate.stdout  # an option that takes a value still shows its type


def test_verbose_is_a_flag_that_turns_on_debug_logging(tmp_path, monkeypatch):
    import logging

    from typer.testing import CliRunner

    from pruning.cli import app

    root, ours = logging.getLogger(), logging.getLogger("pruning")
    monkeypatch.setattr(root, "handlers", list(root.handlers))  # the callback replaces them (basicConfig force=True)
    for logger in (root, ours):
        monkeypatch.setattr(logger, "level", logger.level)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(tmp_path)
    for argv, level in ((["-v"], logging.DEBUG), (["--verbose"], logging.DEBUG), ([], logging.INFO)):
        result = CliRunner().invoke(app, [*argv, "bench", "nothing_here"])
        assert result.exit_code == 2  # `bench` was read as the verb: the flag took no value
        assert "no benchmark 'nothing_here'" in result.output
        assert logging.getLogger("pruning.training").getEffectiveLevel() == level  # an epoch line at INFO shows
        assert root.level == logging.WARNING  # libraries logging to the root logger itself (onnxruntime) do not


def test_piped_output_is_not_wrapped_at_80_columns(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    widths = subprocess.run([sys.executable, "-c", "from pruning import cli; print(cli.out.width, cli.err.width)"],
                            cwd=tmp_path, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    assert widths.stdout.split() == ["200", "200"], widths.stderr
    name = "a_benchmark_with_a_name_long_enough_to_pass_80_columns_" * 2
    out = subprocess.run([sys.executable, "-m", "pruning", "bench", name], cwd=tmp_path, capture_output=True, text=True,
                         env=env, stdin=subprocess.DEVNULL)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"error: no benchmark {name!r} in {tmp_path / 'bench'} "
                                               "(run from the repository root)"]


def test_a_sigterm_to_the_cli_reaches_the_flow_process_and_is_waited_for(tmp_path):
    # `docker stop` signals PID 1 only: `pruning serve` must pass SIGTERM on and wait for the runner's clean stop.
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "__init__.py").write_text("")
    (tmp_path / "bench" / "stopper.py").write_text(textwrap.dedent("""
        import pathlib, signal, sys, time

        def stop(signum, frame):
            time.sleep(0.5)  # a clean stop takes a moment
            pathlib.Path("stopped").write_text(str(signum))
            sys.exit(3)

        signal.signal(signal.SIGTERM, stop)
        pathlib.Path("ready").write_text("")
        time.sleep(120)
    """))
    cli = subprocess.Popen([sys.executable, "-m", "pruning", "bench", "stopper"], cwd=tmp_path,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (tmp_path / "ready").exists():
        assert cli.poll() is None and time.monotonic() < deadline, "the benchmark process did not start"
        time.sleep(0.05)
    cli.send_signal(signal.SIGTERM)
    assert cli.wait(timeout=60) == 3  # the child's own exit code: the CLI waited for its clean stop
    assert (tmp_path / "stopped").read_text() == str(int(signal.SIGTERM))


def test_piped_logs_are_one_plain_line_each_and_a_result_leaves_out_what_does_not_apply(capsys):
    """Piped (here: pytest's capture), Rich padded every log line to 200 columns; quantize printed
    `chosen=None, int8_faster_than_fp32=None`."""
    import logging
    from types import SimpleNamespace

    from pruning.cli import _done
    from pruning.progress import log_handler

    line = log_handler().format(logging.LogRecord("pruning", logging.INFO, __file__, 1, "prune step %d/%d", (1, 2),
                                                  None))
    assert re.fullmatch(r"\d\d:\d\d:\d\d INFO     prune step 1/2", line), line
    _done("quantize", SimpleNamespace(mode="static", calibration_samples=64, chosen=None, macs_reduction=3.76130286))
    assert capsys.readouterr().out.strip() == "quantize done: mode=static, calibration_samples=64, macs_reduction=3.761"
