"""Residual blocks, found from the graph: wherever a module's forward adds a branch's output to its own input.

A residual connection computes ``y = S(u) + F(u)`` (He et al. 2016): ``u`` a tensor inside some module's forward,
``S`` the shortcut (the identity, or a short chain such as a strided 1x1 convolution + BatchNorm), ``F`` the residual
branch. When ``F`` contributes little the block can go and the network keeps working (Veit et al. 2016): the add
becomes ``S(u)``, and every layer of ``F`` disappears with its MACs and parameters. What follows the add (a ReLU) stays.

Nothing here knows a model class. Each module whose class is not one of torch's own is traced with torch.fx, every
submodule a leaf, so its graph holds only its own operations (``x + self.block(x)`` in a user's forward, or
``relu(bn2(conv2(...)) + shortcut(x))`` in a basic block). An add is a residual when

- one operand ``S`` is ``u`` itself or a chain of single-input operations from ``u`` (the shortcut) and the other,
  ``F``, depends on ``u``; of the two readings the one with the shorter shortcut is the residual (a basic block's main
  path is a chain too), and the shortcut must be shorter than the branch (two parallel paths are not a residual);
- ``F``'s operations read nothing from outside the branch but ``u`` (and constants), and feed nothing but the add;
- ``F`` calls at least one module (there is something to remove), and both operands have the same shape (one sample
  through the whole model, torch.fx's ShapeProp): a broadcast add is not a residual.

A module fx cannot trace (data-dependent control flow) is skipped: its blocks are not found, its children's are.
Removal replaces the owner module by a GraphModule without the branch that shares every kept layer (weights
included); a block is recorded by name, and :func:`remove` on a freshly built model rebuilds the same architecture.
"""

from __future__ import annotations

import contextlib
import logging
import operator
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from pruning.counting import example_input
from pruning.data import forward

log = logging.getLogger(__name__)

_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_ADD_METHODS = {"add", "add_"}


@dataclass(frozen=True)
class Residual:
    """One residual block: the add node ``node`` in the forward of the module ``owner``."""

    name: str  # how model files, reports and errors name it
    owner: str  # qualified name of the module whose forward holds the add ("" = the model itself)
    node: str  # the add's node name in the owner's fx graph (deterministic for a module)
    branch: tuple[str, ...]  # qualified names of the modules the branch F calls (what removal takes away)


class _Leaves(fx.Tracer):
    """Every submodule is a leaf: a module's graph shows its own operations only (its children's are theirs)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True


def _traced(module: nn.Module) -> fx.GraphModule | None:
    if type(module).__module__.startswith("torch.") or next(module.children(), None) is None:
        return None  # torch's own layers and containers hold no residual add; a childless module has no branch
    try:
        return fx.GraphModule(module, _Leaves().trace(module), class_name=type(module).__name__)
    except Exception as exc:  # noqa: BLE001 - any tracing failure only means "not analysable"
        log.debug("residual: cannot trace %s (%s)", type(module).__name__, exc)
        return None


def _is_add(node: fx.Node) -> bool:
    if node.kwargs or len(node.args) != 2 or not all(isinstance(a, fx.Node) for a in node.args):
        return False  # e.g. torch.add(a, b, alpha=2), or an add of a constant
    return (node.op == "call_function" and node.target in _ADD_FUNCTIONS) or (
        node.op == "call_method" and node.target in _ADD_METHODS)


def _ancestors(node: fx.Node) -> set[fx.Node]:
    seen: set[fx.Node] = set()
    stack = list(node.all_input_nodes)
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(n.all_input_nodes)
    return seen


def _reading(add: fx.Node, s: fx.Node, f: fx.Node) -> tuple[int, set[fx.Node]] | None:
    """(shortcut length, branch nodes) if ``add = s + f`` reads as shortcut ``s`` plus residual branch ``f``."""
    f_anc = _ancestors(f)
    u, length = s, 0
    while u not in f_anc:  # walk the shortcut back to the tensor u the branch starts from
        inputs = u.all_input_nodes
        if u.op not in ("call_module", "call_function", "call_method") or len(inputs) != 1 or len(u.users) != 1:
            return None
        u, length = inputs[0], length + 1
    branch = {n for n in f_anc | {f} if n is not u and u in _ancestors(n)}
    if not any(n.op == "call_module" for n in branch) or length >= len(branch):
        return None
    for n in branch:
        if any(i not in branch and i is not u and i.op != "get_attr" for i in n.all_input_nodes):
            return None  # the branch reads another tensor: not F(u)
        if any(user not in branch and user is not add for user in n.users):
            return None  # the branch feeds something else too
    return length, branch


def _split(add: fx.Node) -> tuple[fx.Node, fx.Node, set[fx.Node]] | None:
    """(shortcut operand, branch operand, branch nodes) of a residual add, or None if it is not one."""
    a, b = add.args
    readings = [(r, s, f) for s, f in ((a, b), (b, a)) if (r := _reading(add, s, f)) is not None]
    if not readings:
        return None
    (_, branch), s, f = min(readings, key=lambda rsf: rsf[0][0])
    return s, f, branch


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode and no gradients (no BatchNorm statistic moves), every module's mode restored afterwards."""
    training = {m: m.training for m in model.modules()}
    try:
        with torch.no_grad():
            yield model.eval()
    finally:
        for m, mode in training.items():
            m.training = mode


def _inputs(model: nn.Module, input_shape: Sequence[int]) -> dict[nn.Module, tuple]:
    """The positional inputs each module receives in one forward pass (its first call), for shape propagation."""
    seen: dict[nn.Module, tuple] = {}

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        if module not in seen and not kwargs:
            seen[module] = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in model.modules()]
    try:
        forward(model, example_input(input_shape))  # a shape, or an example input (pruning.counting)
    finally:
        for h in handles:
            h.remove()
    return seen


def find(model: nn.Module, input_shape: Sequence[int]) -> dict[str, Residual]:
    """Every residual block of ``model``, by name, in module order (then graph order within a module).

    A block is named by its owner module when the owner holds one residual add (``layers.3``), by its branch when
    that is one module (``block2`` for ``x + self.block2(x)``), else ``owner[k]``. The model is left as it was.
    """
    with evaluating(model):
        return _find(model, input_shape)


def _find(model: nn.Module, input_shape: Sequence[int]) -> dict[str, Residual]:
    inputs = _inputs(model, input_shape)
    blocks: dict[str, Residual] = {}
    for owner, module in model.named_modules():
        gm = _traced(module) if module in inputs else None
        if gm is None:
            continue
        try:
            ShapeProp(gm).propagate(*inputs[module])
        except Exception as exc:  # noqa: BLE001 - a graph that does not run as traced is not analysable
            log.debug("residual: shape propagation failed in %r (%s)", owner, exc)
            continue
        adds = [(n, split) for n in gm.graph.nodes if _is_add(n) and _shape(n.args[0]) is not None
                and _shape(n.args[0]) == _shape(n.args[1]) and (split := _split(n)) is not None]
        for k, (node, (_, _, branch)) in enumerate(adds):
            called = tuple(dict.fromkeys(_qual(owner, str(n.target)) for n in gm.graph.nodes
                                         if n in branch and n.op == "call_module"))
            name = owner if owner and len(adds) == 1 else called[0] if len(called) == 1 else f"{owner or 'model'}[{k}]"
            blocks[name] = Residual(name, owner, node.name, called)
    return blocks


def _qual(owner: str, target: str) -> str:
    return f"{owner}.{target}" if owner else target


Replace = Callable[[fx.GraphModule, fx.Node, fx.Node, fx.Node], fx.Node]  # (gm, add, shortcut, branch) -> new node


def _in_place(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether ``node`` writes into its input (``nn.ReLU(inplace=True)``, ``x.relu_()``, ``x += y``)."""
    if node.op == "call_module":
        return bool(getattr(gm.get_submodule(str(node.target)), "inplace", False))
    if node.op == "call_method":
        return str(node.target).endswith("_")
    return node.op == "call_function" and (node.target is operator.iadd or bool(node.kwargs.get("inplace")))


def _shortcut_only(gm: fx.GraphModule, add: fx.Node, s: fx.Node, f: fx.Node) -> fx.Node:
    # The add made a fresh tensor, so what follows may work in place (a basic block's ReLU(inplace=True)). The
    # shortcut may be a tensor the rest of the network still needs (the block's input): then hand on a copy (an ONNX
    # Identity, which ONNX Runtime removes).
    if any(_in_place(gm, user) for user in add.users):
        return gm.graph.call_method("clone", (s,))
    return s


def rewritten(module: nn.Module, nodes: set[str], replace: Replace = _shortcut_only) -> fx.GraphModule:
    """A GraphModule computing ``module`` with the residual adds named ``nodes`` replaced (by their shortcut, by
    default; the branch then has no user and goes). Kept submodules are shared with ``module``, not copied."""
    gm = _traced(module)
    assert gm is not None, "a block's owner traced when the block was found"
    for add in [n for n in gm.graph.nodes if n.name in nodes]:
        split = _split(add)
        assert split is not None, f"{add.name} was a residual add when it was found"
        s, f, _ = split
        with gm.graph.inserting_after(add):
            new = replace(gm, add, s, f)
        if new is not add:
            add.replace_all_uses_with(new, delete_user_cb=lambda user, new=new: user is not new)
            gm.graph.erase_node(add)
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()  # the branch's layers, so they leave the parameters and the state dict
    return gm


def _set(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` at ``name`` in ``model``; returns the model, which is ``new`` itself when ``name`` is ""."""
    if not name:
        return new
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)  # keeps a Sequential's order
    return model


@contextlib.contextmanager
def swapped(model: nn.Module, owners: dict[str, nn.Module]) -> Iterator[nn.Module]:
    """Run with the named owner modules replaced; yields the model to call (the replacement when the root is one)
    and puts the originals back, whatever happens."""
    originals = {name: model.get_submodule(name) for name in owners}
    current = model
    try:
        for name, new in owners.items():
            current = _set(current, name, new.train(originals[name].training))
        yield current
    finally:
        for name, old in originals.items():
            if name:
                _set(model, name, old)


def group_by_owner(blocks: Sequence[Residual]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for b in blocks:
        out.setdefault(b.owner, set()).add(b.node)
    return out


def check_names(blocks: dict[str, Residual], names: Sequence[str]) -> None:
    """ValueError naming the first unknown or repeated block, with the removable ones listed."""
    seen: set[str] = set()
    for name in names:
        if name not in blocks or name in seen:
            why = "repeated block" if name in seen else "not a residual block of this model"
            raise ValueError(f"cannot remove {name!r}: {why}; removable blocks: {', '.join(blocks) or 'none'}")
        seen.add(name)


def remove(model: nn.Module, names: Sequence[str], input_shape: Sequence[int],
           blocks: dict[str, Residual] | None = None) -> nn.Module:
    """Replace the named blocks by their shortcuts. Returns the model (a new object only if the model's own forward
    held one of the adds). Every name is checked before anything changes. ``blocks``: :func:`find`'s result for this
    model, if the caller has it.

    Raises:
        ValueError: a name is unknown or repeated; the message lists the removable blocks.
    """
    blocks = find(model, input_shape) if blocks is None else blocks
    check_names(blocks, names)
    for owner, nodes in group_by_owner([blocks[n] for n in names]).items():
        module = model.get_submodule(owner)
        model = _set(model, owner, rewritten(module, nodes).train(module.training))
    return model


def branch_output(model: nn.Module, block: Residual) -> str | None:
    """Qualified name of the module whose output is the block's branch ``F`` (what the add adds to the shortcut), or
    None when ``F`` ends in an operation that is not a module call, or that module is called more than once.
    A hook on that module scales ``F`` (complexity-aware training's block gate) without rewriting the model."""
    gm = _traced(model.get_submodule(block.owner))
    add = next((n for n in gm.graph.nodes if n.name == block.node), None) if gm is not None else None
    split = _split(add) if add is not None else None
    if split is None or split[1].op != "call_module":
        return None
    target = split[1].target
    if sum(1 for n in gm.graph.nodes if n.op == "call_module" and n.target == target) != 1:
        return None
    return _qual(block.owner, str(target))
