"""The layers show without a tool: the driver and publishing import no torch themselves, trainables imports
nothing from above it, and the parts both sides share load without torch."""

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# What the driver and a trial both use: plans, settings, the report's contract. The driver unpickles and plans with
# them, so they must stay free of torch (and of Ray, which a trial's own process already has).
SHARED_TORCH_FREE = ("settings", "hyperparameters", "documented", "trial_contract", "trial_plan", "packing_plan",
                     "attention_choice", "memory_plan", "checkpoint_retention", "scoring", "data", "task_data",
                     "reasoning_data", "errors")


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_the_driver_and_publishing_import_no_torch_themselves():
    offenders = [f"{path.relative_to(REPO)}: {module}" for package in ("orchestrator", "publishing")
                 for path in sorted((REPO / package).rglob("*.py")) for module in imported_modules(path)
                 if module == "torch" or module.startswith("torch.")]
    assert offenders == []


def test_trainables_imports_nothing_from_the_layers_above():
    offenders = [f"{path.relative_to(REPO)}: {module}" for path in sorted((REPO / "trainables").rglob("*.py"))
                 for module in imported_modules(path) if module.split(".")[0] in ("orchestrator", "publishing")]
    assert offenders == []


def test_the_shared_parts_load_without_torch():
    probe = (f"import importlib, sys\nfor name in {SHARED_TORCH_FREE!r}:\n"
             "    importlib.import_module('trainables.' + name)\n"
             "print(sorted(m for m in ('torch', 'transformers', 'peft', 'ray') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
