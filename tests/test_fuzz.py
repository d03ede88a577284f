"""Fuzzing the edge: a mutated params.yaml, or a damaged data / model file, is one line on stderr and exit code 2 —
never a traceback, never another exit code, and not a byte written in the workspace.

The generator is general, not a list of known cases: a mutation picks any key path of a valid params.yaml and puts
there a value of a kind that key cannot take (NaN / infinities, numbers far out of range, text, lists, mappings, path
escapes), adds an unknown key at any level, or damages the text itself (truncation, bad encodings, deep nesting,
duplicate keys, alias bombs); a file mutation damages a split, meta.json or a model file the next stage reads. A
mutation that happens to leave a valid config is discarded (``assume``); hypothesis runs derandomized (seeded).
The CLI runs in this process (typer's CliRunner): the same code path as ``python -m pruning``, 200+ cases in seconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import pickle
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from pruning.cli import app
from pruning.config import load_config
from pruning.errors import PruningError
from tests.conftest import TINY, merge, write_params

FUZZ = settings(max_examples=220, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                       HealthCheck.function_scoped_fixture])


def _paths(tree: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key path of a params tree (sections and leaves)."""
    out = []
    if isinstance(tree, dict):
        for key, value in tree.items():
            out.append((*prefix, key))
            out += _paths(value, (*prefix, key))
    return out


BASE = merge(TINY, {"tracking": {"enabled": True}})  # every section present
KEY_PATHS = _paths(BASE)

never_a_number = st.sampled_from([math.nan, math.inf, -math.inf, 1e30, -1e30, 10 ** 12, -(10 ** 12), 1e300])
junk = st.one_of(
    never_a_number,
    st.text(min_size=0, max_size=12),
    st.lists(st.integers(-5, 5), max_size=3),
    st.dictionaries(st.sampled_from(["x", "typo", "0"]), st.integers(), max_size=2),
    st.sampled_from([None, True, False, "", "\x00", "yes", [], {}]),
)
escape = st.sampled_from(["../outside.json", "/etc/passwd", "~/x.json", ".git/HEAD", "params.yaml", "dvc.lock",
                          "pruning/config.py", "flows/pipeline.py", "", "a\x00b", "x" * 5000, "data/train.npz",
                          "data/../../x", "weights/x.json", ".", "data"])


@st.composite
def structural(draw) -> tuple[str, bytes]:
    """A params tree with one key's value replaced, or an unknown key added, dumped as YAML."""
    tree = merge(BASE, {})
    path = draw(st.sampled_from(KEY_PATHS))
    node = tree
    for key in path[:-1]:
        node = node[key]
    how = draw(st.sampled_from(["value", "value", "unknown_key", "escape"]))
    if how == "unknown_key":
        target = node[path[-1]] if isinstance(node[path[-1]], dict) else node
        target[draw(st.sampled_from(["colour", "ratio_", "Epochs", "x"]))] = draw(junk)
    elif how == "escape":
        key = draw(st.sampled_from([k for k in BASE["paths"]] + ["data.path", "model.weights"]))
        value = draw(escape)
        if key == "data.path":
            tree["data"] = {"source": "npz", "path": value}
        elif key == "model.weights":
            tree["model"]["weights"] = value
        else:
            tree["paths"][key] = value
        path = (key,)
    else:
        node[path[-1]] = draw(junk)
    return f"{how} {'.'.join(path)}", yaml.safe_dump(tree, sort_keys=False, allow_unicode=True).encode()


@st.composite
def textual(draw) -> tuple[str, bytes]:
    """The YAML text of a valid params.yaml, damaged."""
    text = yaml.safe_dump(BASE, sort_keys=False)
    how = draw(st.sampled_from(["truncate", "bytes", "utf16", "deep", "duplicate", "bomb", "long_int", "tabs"]))
    if how == "truncate":
        cut = draw(st.integers(0, len(text) - 1))
        return how, text[:cut].encode()
    if how == "bytes":
        at = draw(st.integers(0, len(text)))
        junk_bytes = draw(st.sampled_from([b"\xff\xfe", b"\xc3\x28", b"\x80", b"\xed\xa0\x80"]))
        return how, text[:at].encode() + junk_bytes + text[at:].encode()
    if how == "utf16":
        return how, text.encode("utf-16")
    if how == "deep":
        depth = draw(st.sampled_from([200, 1000, 5000]))
        return how, (text + "bench: " + "[" * depth + "]" * depth + "\n").encode()
    if how == "duplicate":
        lines = text.splitlines(keepends=True)
        top = [ln for ln in lines if ln[:1].isalpha()]
        return how, (text + draw(st.sampled_from(top))).encode()
    if how == "bomb":  # "billion laughs": each level repeats the previous one `width` times
        width = draw(st.integers(5, 10))
        levels = ["a0: &a0 [" + ", ".join(["x"] * width) + "]"]
        levels += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, 9)]
        return how, (text + "bench:\n" + "".join(f"  {ln}\n" for ln in levels)).encode()
    if how == "long_int":
        return how, text.replace("seed: 0", "seed: " + "9" * draw(st.integers(4400, 6000))).encode()
    return how, text.replace("  ", "\t", 1).encode()


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest() + str(p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


def _one_line_exit_2(root: Path, verb: str) -> str:
    """Run ``python -m pruning <verb>`` in ``root`` (in this process); assert exit 2, one line, nothing written."""
    before = _snapshot(root)
    with contextlib.chdir(root.parent):  # from elsewhere: the workspace is params.yaml's directory
        result = CliRunner().invoke(app, [verb, "--params", str(root / "params.yaml")], catch_exceptions=True)
    after = _snapshot(root)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"uncaught {type(result.exception).__name__}: {result.exception}")
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output and not result.stdout.strip(), result.output
    assert after == before, set(after.items()) ^ set(before.items())
    return lines[0]


def _workspace(root: Path) -> Path:
    for name in ("dvc.yaml",):
        shutil.copy(Path(__file__).resolve().parents[1] / name, root / name)
    (root / "weights").mkdir(exist_ok=True)
    return root


def _valid(params: Path) -> bool:
    try:
        load_config(params)
    except PruningError:
        return False
    return True


@FUZZ
@given(case=st.one_of(structural(), structural(), textual()))
def test_a_damaged_params_yaml_is_one_line_exit_2_and_nothing_written(case, tmp_path_factory):
    what, content = case
    root = _workspace(tmp_path_factory.mktemp("fuzz"))
    (root / "params.yaml").write_bytes(content)
    assume(not _valid(root / "params.yaml"))  # the mutation left a valid config: nothing to check here
    line = _one_line_exit_2(root, "prepare")
    assert "params.yaml" in line or "paths." in line or "data." in line or "model." in line, (what, line)


# ---- data and model files -------------------------------------------------------------------------------------


def _npz(**arrays: Any) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _damaged(original: bytes, how: str, cut: float, name: str) -> bytes:
    if how == "truncate":
        return original[: int(len(original) * cut)]
    if how == "empty":
        return b""
    if how == "random":
        return hashlib.sha512(str(cut).encode()).digest() * 20
    if how == "flip" and name.endswith(".npz"):  # a byte in the middle changed: the zip's CRC catches it
        at = max(1, int(len(original) * cut)) - 1
        return original[:at] + bytes([original[at] ^ 0xFF]) + original[at + 1:]
    if how == "flip":  # a flipped byte a format cannot notice is no damage to report: cut the file short instead
        return original[: len(original) // 3]
    if name.endswith(".npz"):
        return {"npy": lambda: (lambda b: (np.save(b, np.zeros((3, 2))), b.getvalue())[1])(io.BytesIO()),
                "strings": lambda: _npz(x=np.array([["a", "b"]] * 4), y=np.zeros(4, np.int64)),
                "objects": lambda: _pickled_npz(),
                "members": lambda: _npz(a=np.zeros(3)),
                "zip_text": lambda: _zip_with(b"not an array")}.get(how, lambda: b"PK")()
    if name.endswith(".json"):
        return {"npy": b"[1, 2]", "strings": b'{"input_shape": "x"}', "objects": b"{}", "members": b'{"a": 1}',
                "zip_text": b"nul\x00"}[how]
    return {"npy": pickle.dumps({"os": __import__("os").system}), "strings": b"PK\x03\x04",
            "objects": pickle.dumps([1, 2]), "members": _zip_with(b"x"), "zip_text": b"\x80\x02}q\x00."}[how]


def _zip_with(content: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("x.npy", content)
        z.writestr("y.npy", content)
    return buf.getvalue()


def _pickled_npz() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, x=np.array([{"a": 1}] * 4, dtype=object), y=np.zeros(4, np.int64))
    return buf.getvalue()


FILE_FUZZ = settings(max_examples=60, derandomize=True, deadline=None, database=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
READERS = {"data/train.npz": "train", "data/test.npz": "train", "data/meta.json": "train",
           "models/dense.pt": "prune", "models/finetuned.pt": "export"}


@pytest.fixture(scope="module")
def prepared(finished: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = _workspace(tmp_path_factory.mktemp("files"))
    for sub in ("data", "models"):
        shutil.copytree(finished / sub, root / sub)
    shutil.copy(finished / "params.yaml", root / "params.yaml")
    return root


@FILE_FUZZ
@given(target=st.sampled_from(sorted(READERS)), cut=st.floats(0.0, 0.99),
       how=st.sampled_from(["truncate", "empty", "random", "flip", "npy", "strings", "objects", "members",
                            "zip_text"]))
def test_a_damaged_data_or_model_file_is_one_line_naming_it(prepared, tmp_path_factory, target, cut, how):
    root = tmp_path_factory.mktemp("damaged")
    for item in prepared.iterdir():
        (shutil.copytree if item.is_dir() else shutil.copy)(item, root / item.name)
    original = (root / target).read_bytes()
    damaged = _damaged(original, how, cut, target)
    if target.endswith(".json"):
        with contextlib.suppress(ValueError, UnicodeDecodeError):  # damage that parses as the same document is none
            assume(json.loads(damaged) != json.loads(original))
    assume(damaged != original)
    (root / target).write_bytes(damaged)
    line = _one_line_exit_2(root, READERS[target])
    assert Path(target).name in line, line


# ---- links that lead out of the workspace ----------------------------------------------------------------------


def test_a_data_directory_linking_out_of_the_workspace_is_refused_before_anything_is_written(tmp_path):
    """data/ -> elsewhere: the text of paths.train_data stays inside, the file prepare would write does not."""
    root, outside = _workspace(_mkdir(tmp_path / "ws")), tmp_path / "elsewhere"
    outside.mkdir()
    (root / "data").symlink_to(outside, target_is_directory=True)
    write_params(root)
    line = _one_line_exit_2(root, "prepare")
    assert line == (f"error: Invalid \"paths.train_data\" in {root / 'params.yaml'}: 'data/train.npz' leads outside "
                    f"the workspace through a symbolic link (to {outside / 'train.npz'}): make it a directory or file "
                    "of the workspace")
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize(("source", "name"), [("npz", "in.npz"), ("imagefolder", "images")])
def test_a_data_path_linking_out_of_the_workspace_is_not_read(tmp_path, source, name):
    root, secret = _workspace(_mkdir(tmp_path / "ws")), tmp_path / "secret"
    if source == "npz":
        secret.write_bytes(_npz(x=np.zeros((4, 2), np.float32), y=np.zeros(4, np.int64)))
    else:
        (secret / "cat").mkdir(parents=True)
    (root / name).symlink_to(secret)
    write_params(root, {"data": {"source": source, "path": name}})
    line = _one_line_exit_2(root, "prepare")
    assert line == (f"error: Invalid \"data.path\" in {root / 'params.yaml'}: {name!r} leads outside the workspace "
                    f"through a symbolic link (to {secret}): make it a directory or file of the workspace")


def test_a_link_inside_the_workspace_and_a_loop_of_links(tmp_path):
    root = _workspace(_mkdir(tmp_path / "ws"))
    (root / "real").mkdir()
    (root / "data").symlink_to(root / "real", target_is_directory=True)  # a link that stays inside: fine
    write_params(root)
    assert load_config(root / "params.yaml").paths.train_data == "data/train.npz"
    (root / "data").unlink()
    (root / "data").symlink_to(root / "data")
    assert _one_line_exit_2(root, "prepare").endswith("'data/train.npz' is a loop of symbolic links")


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


@pytest.mark.parametrize("verb", ["quantize", "evaluate"])
def test_onnx_external_data_outside_the_model_s_directory_is_one_line_in_every_stage(finished, tmp_path, verb):
    """An ONNX file of the workspace whose weights point out of its directory: quantize and evaluate refuse it alike,
    in one line naming the file and the tensor (evaluate gave ONNX Runtime's 56-line traceback)."""
    import onnx

    from tests.runtime.test_session import externalize

    root = _workspace(_mkdir(tmp_path / "ws"))
    for sub in ("data", "models", "reports"):
        shutil.copytree(finished / sub, root / sub)
    shutil.copy(finished / "params.yaml", root / "params.yaml")
    onnx_file = root / load_config(root / "params.yaml").paths.pruned_onnx
    model = onnx.load(str(onnx_file))
    tensor = model.graph.initializer[0]
    externalize(model, tensor, root / "weights.bin", "../weights.bin")
    onnx.save(model, str(onnx_file))
    line = _one_line_exit_2(root, verb)
    assert line == (f"error: {onnx_file}: tensor {tensor.name!r} keeps its data in '../weights.bin', outside the "
                    "model's directory: refused (rerun the stage that wrote it)")


# ---- user code that exits, and YAML values DVC cannot hash ------------------------------------------------------


@pytest.mark.parametrize(("key", "body", "did"), [
    ("model.arch", "import sys\nsys.exit(3)\n", "it called sys.exit(3)"),
    ("model.arch", "raise KeyboardInterrupt\n", "it raised KeyboardInterrupt"),
    ("data.source", "raise SystemExit\n", "it called sys.exit()"),
])
def test_a_user_module_that_exits_at_import_is_one_line_naming_it(tmp_path, key, body, did):
    """Exit 3 / 130 and no message before: SystemExit and KeyboardInterrupt are no Exceptions."""
    root = _workspace(_mkdir(tmp_path / "ws"))
    module = f"exits_at_import_{abs(hash((key, body))) % 10**8}"  # a name of its own: imports are cached
    (root / f"{module}.py").write_text(body)
    section, field = key.split(".")
    write_params(root, {section: {field: f"{module}:build"}})
    assert _one_line_exit_2(root, "prepare") == (f'error: Invalid "{key}" in {root / "params.yaml"}: cannot import '
                                                 f"module {module!r} ({did})")


def test_a_ctrl_c_while_a_user_module_imports_is_still_an_interrupt(tmp_path, monkeypatch):
    """What tells a module's own KeyboardInterrupt from the user's: a SIGINT arrived meanwhile (the handler in place,
    Python's default here, still runs and raises it)."""
    import signal

    from pruning.zoo import resolve_callable

    (tmp_path / "slow_to_import.py").write_text("import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\n"
                                                "time.sleep(5)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    # Python's own handler, as in a terminal: a test run started in the background by a shell without job control
    # inherits an ignored SIGINT, and the kill above would then do nothing
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            resolve_callable("slow_to_import:build")
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler in place again
    finally:
        signal.signal(signal.SIGINT, before)


def test_a_binary_value_in_params_yaml_is_one_line_before_dvc_or_a_stage_reads_it(tmp_path):
    root = _workspace(_mkdir(tmp_path / "ws"))
    params = write_params(root, {"registry": {"model_name": "PLACEHOLDER"}})
    params.write_text(params.read_text().replace("PLACEHOLDER", "!!binary dGlueS1pbnQ4"))
    assert _one_line_exit_2(root, "prepare").startswith(f'error: Invalid "registry.model_name" in {params} (line ')
