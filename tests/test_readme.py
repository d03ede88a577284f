"""README tells the truth: its first commands, its generated params reference, its "Adding a pruning method" example."""

import importlib.util
import re
import sys

import torch

from bench.readme import PARAMS_END, PARAMS_START, params_table
from pruning import checkpoint
from pruning.counting import count_macs
from pruning.data import Data, Split
from pruning.methods import Context
from pruning.zoo import build_model
from tests.conftest import REPO

README = (REPO / "README.md").read_text()


def test_readme_starts_with_make_run_and_make_test():
    block = re.search(r"```bash\n(.*?)```", README, re.S).group(1).splitlines()
    assert [line.split()[:2] for line in block[:2]] == [["make", "run"], ["make", "test"]]


def test_the_params_reference_is_the_one_generated_from_the_config_models():
    written = README.split(PARAMS_START, 1)[1].split(PARAMS_END, 1)[0]
    assert written.strip() == params_table().strip(), "README is stale: run `make docs` (python -m bench.readme)"


def test_the_adding_a_method_example_runs_and_its_model_file_rebuilds(tmp_path):
    code = re.search(r"```python\n(# pruning/methods/halve\.py.*?)```", README, re.S).group(1)
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
