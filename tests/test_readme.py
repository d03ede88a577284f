"""README and the docs tell the truth: README's first commands and its size (a front page), the generated params
reference of docs/params.md, the "Adding a pruning method" example of docs/methods.md."""

import importlib.util
import re
import sys

import torch

from pruning import checkpoint
from pruning.counting import count_macs
from pruning.data import Data, Split
from pruning.methods import Context
from pruning.zoo import build_model
from tests.conftest import REPO

README = (REPO / "README.md").read_text()
DOCS = REPO / "docs"
MAX_README_LINES = 250  # a front page: what it is, the two commands, the summary, the stages, links to the docs


def _gen_params():
    """docs/gen_params.py, imported by its path (docs/ is not a package)."""
    spec = importlib.util.spec_from_file_location("gen_params", DOCS / "gen_params.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_starts_with_make_run_and_make_test():
    block = re.search(r"```bash\n(.*?)```", README, re.S).group(1).splitlines()
    assert [line.split()[:2] for line in block[:2]] == [["make", "run"], ["make", "test"]]


def test_readme_is_a_front_page():
    lines = len(README.splitlines())
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines (at most {MAX_README_LINES}): move the rest to docs/"


def test_the_params_reference_is_the_one_generated_from_the_config_models():
    gen = _gen_params()
    page = (DOCS / "params.md").read_text()
    written = page.split(gen.PARAMS_START, 1)[1].split(gen.PARAMS_END, 1)[0]
    assert written.strip() == gen.params_table().strip(), \
        "docs/params.md is stale: run `make docs` (python docs/gen_params.py)"


def test_the_adding_a_method_example_runs_and_its_model_file_rebuilds(tmp_path):
    code = re.search(r"```python\n(# pruning/methods/halve\.py.*?)```", (DOCS / "methods.md").read_text(), re.S).group(1)
    path = tmp_path / "halve.py"
    path.write_text(code)
    spec = importlib.util.spec_from_file_location("halve_example", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["halve_example"] = module
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    data = Data(Split(torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))),
                Split(torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))), (1, 8, 8), 10)
    model = build_model("resnet", {"widths": [32, 32, 64]}, (1, 8, 8), 10)
    dense_macs = count_macs(model, (1, 8, 8))[0]
    ctx = Context(data=data, seed=0, device="cpu", build=lambda: model, latency_table=tmp_path / "t.json", opset=17)
    cfg = module.Config()
    assert cfg.method == "halve"
    out = module.apply(model, cfg, ctx)
    assert count_macs(out.model, (1, 8, 8))[0] < 0.4 * dense_macs
    checkpoint.save_model(tmp_path / "m.pt", out.model, arch="resnet", kwargs={"widths": [32, 32, 64]},
                          input_shape=(1, 8, 8), num_classes=10, edits=out.edits)
    loaded, _ = checkpoint.load_model(tmp_path / "m.pt")
    x = data.test.x[:2]
    with torch.no_grad():
        assert torch.equal(loaded(x), out.model.eval()(x))
