"""The package's structure: no import cycles between possae's modules."""

from __future__ import annotations

import ast
from pathlib import Path

import possae

PACKAGE = Path(possae.__file__).parent


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Return {module: possae modules it imports}, counting imports inside functions too."""
    modules = {".".join(p.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__"): p
               for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            deps |= {t for t in targets if t in modules and t != name and t != "possae"}
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """Return one import cycle as a list of modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (c := visit(d)):
                return c
        state[m] = 2
        stack.pop()
        return None

    for m in sorted(graph):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_find_cycle_detects_a_constructed_cycle():
    """The detector finds a three-module cycle and none in a chain."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_possae_has_no_import_cycles():
    """No possae module imports (directly or through others) itself, even through imports inside functions."""
    graph = import_graph()
    assert "possae.loaders" in graph and "possae.hooks" in graph["possae.loaders"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_hook_activations_equal_the_cached_hook_and_run_no_later_block():
    """hook_activations gives exactly what run_with_cache records at the hook; at a resid_pre hook it runs no block
    from the hook's own on (a hook inside that block never fires)."""
    import torch

    from possae.hooks import act_name, hook_activations, resid_pre
    from tests.builders import make_tiny_model

    model = make_tiny_model(n_layers=2)
    tokens = torch.randint(0, 500, (2, 7))
    for hook in (resid_pre(0), resid_pre(1), act_name("mlp_out", 0)):
        _, cache = model.run_with_cache(tokens, names_filter=hook)
        fired = []
        model.add_hook(act_name("attn_out", 1), lambda act, hook: fired.append(hook.name))
        try:
            assert torch.equal(hook_activations(model, tokens, hook), cache[hook]), hook
        finally:
            model.reset_hooks()
        assert not fired, hook
