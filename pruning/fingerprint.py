"""What the prepare stage's outputs are a function of, computed without importing torch.

DVC runs the prepare stage on every ``dvc repro`` (``always_changed``): the data a source reads are files DVC is not
told about (your folder, your Dataset's files, your data module). Two things are hashed here:

- :func:`source_digest` — the data themselves: the name and content of every file under ``data.path`` and the code of
  the user's data module. The prepare stage writes it into data/meta.json, which every later stage depends on: a
  changed file reruns what follows.
- :func:`recipe` — everything the split files are a function of: that digest, the params prepare reads, the code of
  this package and the versions of the libraries that load and split the data. prepare records it beside its outputs
  (``.prepared.json``, with the outputs' md5) and :func:`unchanged` compares: when nothing changed and the outputs are
  the ones it wrote, the stage's command returns at once, without importing torch, and a ``dvc repro`` with nothing
  to do stays within a second or so. Anything unknown (no record, a file missing or edited, params unreadable) means
  changed: prepare then runs in full, and DVC decides what follows from the outputs' hashes as always.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from pruning.atomic import write_bytes

RECORD = ".prepared.json"  # beside data_meta: the recipe of the outputs prepare last wrote
FILE_HASHES = ".fingerprints.json"  # beside data_meta: name -> [size, mtime_ns, md5] of the source's files
PARAMS = ("seed", "data")  # the params.yaml sections prepare reads (dvc.yaml's prepare stage lists them too)
OUTPUTS = ("train_data", "test_data", "data_meta")  # paths.* keys of what prepare writes
LIBRARIES = ("numpy", "scikit-learn", "mnist1d", "torch", "pillow")  # load, split and save the data


def _md5(path: Path) -> str:
    md5 = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            md5.update(chunk)
    return md5.hexdigest()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def source_digest(source: str, path: str | None, code: Iterable[str] = (), cache: str | Path | None = None) -> str:
    """sha256 over the source's name, the name and content (md5) of every file under ``path`` and the bytes of the
    user's data module files ``code``.

    Content, not modification times: a fresh clone or ``dvc pull`` rewrites every mtime without changing the data.
    ``cache`` (a JSON file: name -> [size, mtime_ns, md5]) keeps the md5s of files whose size and mtime did not
    change, so a rerun on unchanged data reads no file (DVC's own trick for its dependencies).
    """
    h = hashlib.sha256(source.encode())
    for file in code:
        if Path(file).is_file():
            h.update(Path(file).read_bytes())
    if path is None:
        return h.hexdigest()
    root = Path(path)
    files = [root] if root.is_file() else sorted(f for f in root.rglob("*") if f.is_file())
    known = (_read_json(Path(cache)) if cache is not None else None) or {}
    fresh: dict[str, list[Any]] = {}
    for f in files:
        st = f.stat()
        key = str(f.resolve())
        entry = known.get(key) if isinstance(known, dict) else None
        if not (isinstance(entry, list) and entry[:2] == [st.st_size, st.st_mtime_ns]):
            entry = [st.st_size, st.st_mtime_ns, _md5(f)]
        fresh[key] = entry
        h.update(f"{f.relative_to(root) if f != root else f.name}\0{entry[2]}\n".encode())
    if cache is not None:
        write_bytes(cache, json.dumps(fresh).encode())
    return h.hexdigest()


def _package_code() -> str:
    """md5 over this package's source files: any change to the code may change what prepare writes."""
    here = Path(__file__).resolve().parent
    h = hashlib.md5()
    for f in sorted(here.rglob("*.py")):
        h.update(f"{f.relative_to(here)}\0".encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": sys.version}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def recipe(raw: dict[str, Any], digest: str) -> str:
    """sha256 of what the split files are a function of: the params prepare reads and the paths it writes (as
    params.yaml holds them), the source's ``digest``, this package's code and the libraries' versions."""
    facts = {"params": {k: raw.get(k) for k in PARAMS}, "paths": {k: (raw.get("paths") or {}).get(k) for k in OUTPUTS},
             "source": digest, "code": _package_code(), "versions": _versions()}
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()


def record(raw: dict[str, Any], root: Path, digest: str, code: list[str]) -> None:
    """After prepare wrote its outputs: their recipe, the user's code files it hashed and the outputs' md5."""
    paths = raw["paths"]
    meta = root / paths["data_meta"]
    outputs = {paths[k]: _md5(root / paths[k]) for k in OUTPUTS}
    write_bytes(meta.parent / RECORD, json.dumps({"recipe": recipe(raw, digest), "code": code,
                                                  "outputs": outputs}).encode())


def unchanged(params: Path) -> bool:
    """True when prepare's outputs next to ``params`` (a params.yaml) are the ones it would write now: its recorded
    recipe is the current one and every output still has the md5 it was written with. Never imports torch, never
    raises: anything it cannot read means False."""
    import yaml

    root = params.parent
    try:
        # params.yaml is trusted; a file the full validation would refuse never got a record to match. The pure-Python
        # loader, as config.py's: libyaml's composer recurses in C and a deeply nested file would crash the process
        raw = yaml.safe_load(params.read_text(encoding="utf-8"))
        paths = raw["paths"]
        meta = root / paths["data_meta"]
        done = _read_json(meta.parent / RECORD)
        if not isinstance(done, dict) or not all((root / paths[k]).is_file() for k in OUTPUTS):
            return False
        data = raw["data"]
        where = str(root / data["path"]) if data.get("path") is not None else None
        digest = source_digest(str(data["source"]), where, done.get("code", []), meta.parent / FILE_HASHES)
        if done.get("recipe") != recipe(raw, digest):
            return False
        return all(_md5(root / name) == md5 for name, md5 in done.get("outputs", {}).items())
    except Exception:  # noqa: BLE001 - a check only: whatever fails here, prepare runs in full and reports it
        return False
