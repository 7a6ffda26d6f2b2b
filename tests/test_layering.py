"""Imports point one way: server -> engine -> core -> policies -> request/config/clock.

The rules are checked two ways, so they cannot break quietly:
- at run time, in a subprocess where `torch` cannot be imported, the scheduler, every
  registered policy and the simulator import and run a tiny simulation;
- statically, with `ast`: what each layer imports, and that no code outside the policies
  package (scripts included) dispatches on a policy's name (`if policy == "slice"`,
  `name.startswith("slice")`) or uses a policy's private members (`policy._replan`).
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "sliceserve"
REPO_DIR = PACKAGE_DIR.parent
SCRIPTS_DIR = REPO_DIR / "scripts"

# Layer (a module or a subpackage of sliceserve) -> module prefixes it must never import.
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "policies": ("asyncio", "time", "torch", "sliceserve.core", "sliceserve.engine",
                 "sliceserve.sim", "sliceserve.model", "sliceserve.server", "sliceserve.bench",
                 "sliceserve.cli", "sliceserve.integrations", "vllm"),
    # The second mechanism for the same policies: beside the core, never through it.
    "integrations": ("torch", "sliceserve.core", "sliceserve.engine", "sliceserve.sim",
                     "sliceserve.model", "sliceserve.server", "sliceserve.bench",
                     "sliceserve.cli"),
    "core": ("asyncio", "torch", "sliceserve.engine", "sliceserve.sim", "sliceserve.model",
             "sliceserve.server", "sliceserve.bench", "sliceserve.cli"),
    "engine": ("sliceserve.sim", "sliceserve.server", "sliceserve.bench", "sliceserve.cli"),
    "sim": ("torch", "sliceserve.model", "sliceserve.server"),
    "model": ("sliceserve.sim", "sliceserve.server"),
    # The llama.cpp executor: beside model/ (whose tokenizer, sampler and profiler it shares),
    # below the engine that builds it.
    "llamacpp": ("sliceserve.engine", "sliceserve.sim", "sliceserve.server", "sliceserve.bench",
                 "sliceserve.cli", "sliceserve.integrations"),
    "metrics": ("torch",),
}
# The contracts everything else builds on import nothing of sliceserve but each other.
CONTRACTS = ("request", "config", "clock", "latency_model", "latency_online")
CONTRACT_IMPORTS_ALLOWED = tuple(f"sliceserve.{m}" for m in CONTRACTS) + ("sliceserve.data",)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_DIR).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) for every import in the file, nested ones included."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            yield node.lineno, prefix
            for alias in node.names:  # `from sliceserve import core` imports a layer too
                yield node.lineno, f"{prefix}.{alias.name}"


def matches(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def layer_files(layer: str) -> list[Path]:
    directory = PACKAGE_DIR / layer
    if directory.is_dir():
        return sorted(directory.rglob("*.py"))
    single = PACKAGE_DIR / f"{layer}.py"
    return [single] if single.exists() else []


def all_package_files() -> list[Path]:
    return sorted(PACKAGE_DIR.rglob("*.py"))


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_point_one_way(layer: str) -> None:
    bad = []
    for path in layer_files(layer):
        for line, module in imported_modules(path):
            for prefix in FORBIDDEN[layer]:
                if matches(module, prefix):
                    bad.append(f"{path.relative_to(REPO_DIR)}:{line} imports {module}")
    assert not bad, f"{layer} must not import {FORBIDDEN[layer]}:\n" + "\n".join(sorted(set(bad)))


def test_policies_are_found_by_the_layer_check() -> None:
    names = {p.name for p in layer_files("policies")}
    assert {"base.py", "registry.py", "orca.py"} <= names


@pytest.mark.parametrize("contract", CONTRACTS)
def test_contracts_import_only_contracts(contract: str) -> None:
    bad = [f"{line}: {module}" for path in layer_files(contract)
           for line, module in imported_modules(path)
           if matches(module, "sliceserve")
           and not any(matches(module, ok) for ok in CONTRACT_IMPORTS_ALLOWED)
           and module != "sliceserve"]
    assert not bad, f"sliceserve/{contract}.py imports beyond the contracts: {bad}"


# --- no dispatch on policy names outside the policies package ---

POLICY_NAMES = {"policy", "policy_name", "policy_id", "scheduler_name", "scheduling_policy"}


def _is_policy_like(node: ast.expr) -> bool:
    """`policy`, `policy_name`, `args.policy`, `self.policy.name`, `cfg.policy_name`, ..."""
    if isinstance(node, ast.Name):
        return node.id in POLICY_NAMES or node.id.endswith("_policy_name")
    if isinstance(node, ast.Attribute):
        if node.attr in POLICY_NAMES or node.attr.endswith("_policy_name"):
            return True
        if node.attr == "name":
            return _is_policy_like(node.value) or (
                isinstance(node.value, ast.Name) and "policy" in node.value.id)
    if isinstance(node, ast.Subscript):  # options["policy"]
        s = node.slice
        return isinstance(s, ast.Constant) and s.value in POLICY_NAMES
    return False


def _is_string_literal(node: ast.expr) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return bool(node.elts) and all(_is_string_literal(e) for e in node.elts)
    return False


STRING_TESTS = {"startswith", "endswith", "__eq__", "__contains__", "find", "index", "count"}


def _is_policy_holder(node: ast.expr) -> bool:
    """`policy`, `self.policy`, `slice_policy`, ...: a policy, whose privates are its own."""
    name = node.id if isinstance(node, ast.Name) else getattr(node, "attr", "")
    return name in POLICY_NAMES or name.endswith("_policy")


def _is_private(name: str) -> bool:  # `_replan`, not `__class__`
    return name.startswith("_") and not name.endswith("__")


def policy_dispatches(source: str) -> list[int]:
    """Lines that compare a policy (name) with a string literal (==, !=, is, `in` literal
    names, `.startswith(...)`, the other STRING_TESTS), `match` on it, or use a policy's private
    member (`policy._replan`, `getattr(policy, "_x")`); comparing two names is no dispatch."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            func = node.func
            if (isinstance(func, ast.Attribute) and func.attr in STRING_TESTS
                    and _is_policy_like(func.value)
                    and any(_is_string_literal(a) for a in node.args)):
                lines.append(node.lineno)
            elif (isinstance(func, ast.Name) and func.id in ("getattr", "hasattr", "setattr")
                  and len(node.args) >= 2 and _is_policy_holder(node.args[0])
                  and _is_private(str(getattr(node.args[1], "value", "")))):
                lines.append(node.lineno)
        elif (isinstance(node, ast.Attribute) and _is_private(node.attr)
              and _is_policy_holder(node.value)):
            lines.append(node.lineno)
        elif isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            for op, left, right in zip(node.ops, operands[:-1], operands[1:], strict=True):
                if isinstance(op, (ast.Eq, ast.NotEq, ast.Is, ast.IsNot)):
                    if ((_is_policy_like(left) and _is_string_literal(right))
                            or (_is_policy_like(right) and _is_string_literal(left))):
                        lines.append(node.lineno)
                elif isinstance(op, (ast.In, ast.NotIn)):
                    if _is_policy_like(left) and _is_string_literal(right):
                        lines.append(node.lineno)
        elif isinstance(node, ast.Match) and _is_policy_like(node.subject):
            lines.append(node.lineno)
    return lines


@pytest.mark.parametrize("snippet", [
    'if policy == "slice": pass',
    'if args.policy_name != "orca": pass',
    'x = "vllm" == self.policy.name',
    'if engine.scheduler.policy.name in ("slice", "slice-paper"): pass',
    'if cfg["policy"] == "edf": pass',
    'match policy_name:\n    case "slice": pass',
    'if not args.policy.startswith("slice"): pass',
    'if policy_name.endswith(("-paper", "-priority")): pass',
    'if engine.scheduler.policy.name.startswith("slice"): pass',
    "replan = getattr(policy, '_replan', None)",
    "policy._replan(view)",
    "mask = self.policy._mask",
])
def test_the_dispatch_detector_finds_dispatch(snippet: str) -> None:
    assert policy_dispatches(snippet), snippet


@pytest.mark.parametrize("snippet", [
    "policy = make_policy(name, model, config)",
    "if policy_name not in policy_names(): raise ValueError(policy_name)",
    'if mode == "slice": pass',
    "if len(policies) == 3: pass",
    'rows = [r for r in runs if r["policy"] == policy]',
    'if system.startswith("sliceserve"): pass',
    "if line.startswith(prefix): pass",
    "policy.replan(view)",
    "policy.__class__.__name__",
    "self._policy_cache = {}",
])
def test_the_dispatch_detector_leaves_other_code_alone(snippet: str) -> None:
    assert not policy_dispatches(snippet), snippet


def test_no_policy_name_dispatch_outside_the_policies_package() -> None:
    policies_dir = PACKAGE_DIR / "policies"
    bad = []
    scripts = sorted(SCRIPTS_DIR.rglob("*.py"))
    assert len(scripts) > 5, "the scripts folder moved: point SCRIPTS_DIR at it"
    for path in all_package_files() + scripts:
        if policies_dir in path.parents:
            continue
        for line in policy_dispatches(path.read_text()):
            bad.append(f"{path.relative_to(REPO_DIR)}:{line}")
    assert not bad, ("code outside sliceserve/policies dispatches on a policy's name; give the "
                     "policy an option or a method instead:\n" + "\n".join(bad))


# --- at run time, without torch ---

NO_TORCH_SCRIPT = textwrap.dedent("""
    import importlib.abc
    import sys

    BLOCKED = ("torch",)

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked: this layer must not need it")
            return None

    sys.meta_path.insert(0, Block())
    for name in list(sys.modules):
        if name.split(".")[0] in BLOCKED:
            del sys.modules[name]

    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("the torch block does not work")

    import sliceserve.core.scheduler
    import sliceserve.policies.base
    from sliceserve.policies.registry import make_policy, policy_names
    from sliceserve.sim.simulator import simulate
    from sliceserve.config import SchedulerConfig
    from sliceserve.latency_model import LatencyModel
    from sliceserve.request import SLO, Request, SamplingParams

    names = policy_names()
    assert "orca" in names, names
    model = LatencyModel.load("paper")
    config = SchedulerConfig(num_kv_blocks=64, block_size=16)
    for name in names:
        requests = [
            Request(f"r{i}", 0.01 * i, 16 + 8 * i,
                    SamplingParams(max_tokens=4, ignore_eos=True),
                    SLO(ttft_ms=200.0 if i % 2 else 2000.0, tpot_ms=50.0 if i % 2 else 250.0,
                        utility=100.0 if i % 2 else 1.0))
            for i in range(4)
        ]
        result = simulate(requests, make_policy(name, model, config), model, config)
        assert len(result.requests) == 4 and all(r.is_finished for r in result.requests), name
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not leaked, leaked
    print("OK", " ".join(names))
""")


def test_core_policies_and_simulator_run_without_torch() -> None:
    proc = subprocess.run([sys.executable, "-c", NO_TORCH_SCRIPT], cwd=REPO_DIR,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("OK ") and "orca" in proc.stdout.split()
