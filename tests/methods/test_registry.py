"""Methods are plug-ins: one file each, one registry line, a name written in one place, a stage that names none."""

import ast
from pathlib import Path

import pytest

from pruning import methods
from pruning.config import parse_config
from tests.conftest import REPO, TINY, merge

PACKAGE = REPO / "pruning"


def _string_literals(path: Path) -> set[str]:
    return {n.value for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant)
            and isinstance(n.value, str)}


def test_every_method_module_has_a_config_named_after_it_and_an_apply():
    assert list(methods.METHODS) == ["channel", "depth", "unstructured", "lottery", "complexity_aware"]
    for name, module in methods.METHODS.items():
        # one file, or a package of its own (a method with helpers: its face re-exports Config and apply)
        assert Path(module.__file__) in (PACKAGE / "methods" / f"{name}.py", PACKAGE / "methods" / name / "__init__.py")
        assert module.Config.model_fields["method"].default == name
        assert callable(module.apply)


def test_a_method_name_is_written_only_in_its_own_file():
    """Adding a method touches its file and the registry's tuple of modules: its name lives in its file alone."""
    for path in PACKAGE.rglob("*.py"):
        found = _string_literals(path) & set(methods.METHODS)
        owner = {path.stem} if path.parent.name == "methods" else \
            {path.parent.name} if path.parent.parent.name == "methods" else set()  # a method's package
        assert found <= owner, f"{path.relative_to(REPO)} names the method(s) {sorted(found - owner)}"


def test_the_prune_stage_has_no_branch_on_a_method_and_dispatches_through_the_registry():
    tree = ast.parse((PACKAGE / "stages" / "prune.py").read_text())
    assert not any(isinstance(n, ast.If | ast.IfExp | ast.Match) and "method" in ast.unparse(n.test if not
                   isinstance(n, ast.Match) else n.subject) for n in ast.walk(tree))
    assert "METHODS[cfg.prune.method].apply(" in ast.unparse(tree)


@pytest.mark.parametrize("name", ["channel", "depth", "unstructured", "lottery", "complexity_aware"])
def test_params_yaml_selects_each_method_by_name_and_validates_its_own_keys(name):
    cfg = parse_config(merge(TINY, {"prune": {"method": name}}))
    assert type(cfg.prune) is methods.METHODS[name].Config
    with pytest.raises(Exception, match='Unknown key "prune.nonsense"'):
        parse_config(merge(TINY, {"prune": {"method": name, "nonsense": 1}}))


def test_a_prune_section_without_a_method_is_the_default_method():
    cfg = parse_config(merge(TINY, {}))
    assert cfg.prune.method == methods.DEFAULT and "method" not in TINY["prune"]
