"""The suite's own layout rules. Shared fixtures live in tests/conftest.py and shared helpers in support modules
(the tests/*.py files that are not test_*.py), so:

- no file under tests/ imports a test module: pytest imports each test module itself, and a second import of it
  (as tests.test_x) is another copy of the module, its fixtures and module-level state included;
- a helper a support module defines is written there only, not copied into another file of tests/.
"""

import ast
import textwrap
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def sources() -> dict[str, str]:
    return {path.name: path.read_text() for path in sorted(TESTS.glob("*.py"))}


def is_test_module(name: str) -> bool:
    return name.startswith("test_") and name.endswith(".py")


def imported_names(node: ast.AST) -> list[str]:
    """The dotted names an import statement (or an importlib.import_module call with a literal name) may load."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative to the tests folder
            base = "tests" + (f".{base}" if base else "")
        return [base, *(f"{base}.{alias.name}" if base else alias.name for alias in node.names)]
    if (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
        return [node.args[0].value]
    return []


def imported_test_modules(source: str, test_modules: set[str]) -> set[str]:
    """The test modules (names in `test_modules`, e.g. "test_sweep") that `source` imports: at its top, inside its
    functions, or in the Python scripts its strings hold (a test may run one with `python -c`)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "import" in node.value:
            try:
                found |= imported_test_modules(textwrap.dedent(node.value), test_modules)
            except SyntaxError:  # a string that is not a script
                pass
        for name in imported_names(node):
            parts = name.split(".")
            if parts[0] == "tests":
                parts = parts[1:]
            if parts and parts[0] in test_modules:
                found.add(parts[0])
    return found


def is_fixture(node: ast.AST) -> bool:
    for decorator in getattr(node, "decorator_list", []):
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if getattr(target, "attr", getattr(target, "id", None)) == "fixture":
            return True
    return False


def top_level_definitions(source: str) -> tuple[set[str], set[str]]:
    """(helpers, fixtures): the names of the functions and classes a file defines at its top level."""
    helpers, fixtures = set(), set()
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            (fixtures if is_fixture(node) else helpers).add(node.name)
    return helpers, fixtures


def import_problems(files: dict[str, str]) -> list[str]:
    test_modules = {name.removesuffix(".py") for name in files if is_test_module(name)}
    return [f"{name} imports {module} (move what it needs into tests/conftest.py or a support module)"
            for name, source in files.items() for module in sorted(imported_test_modules(source, test_modules))]


def copy_problems(files: dict[str, str]) -> list[str]:
    """Each name a support module defines (helpers; fixtures of conftest.py) that another file defines again.

    Only the support modules' names are checked: test modules keep small local helpers of their own, and several
    share a common name (`run`, `rows`, `record`, a `cluster` fixture each) without being copies of one another; a
    check over every file would flag those. A local helper named like a shared one is flagged, though: a reader would
    take it for the shared one."""
    definitions = {name: top_level_definitions(source) for name, source in files.items()}
    problems = []
    for support, (helpers, fixtures) in definitions.items():
        if is_test_module(support):
            continue
        shared = helpers | (fixtures if support == "conftest.py" else set())
        for other, (other_helpers, other_fixtures) in definitions.items():
            if other == support:
                continue
            # a fixture of another support module (local_hub, say) is imported, not copied, by the modules using it
            again = shared & (other_helpers | (other_fixtures if support == "conftest.py" else set()))
            problems += [f"{other} defines {name} again (it is {support}'s)" for name in sorted(again)]
    return problems


def test_no_file_of_the_suite_imports_a_test_module():
    problems = import_problems(sources())
    assert not problems, "\n".join(problems)


def test_each_shared_helper_and_fixture_is_written_once():
    problems = copy_problems(sources())
    assert not problems, "\n".join(problems)


def test_the_rules_catch_what_they_are_meant_to():
    """Each way the suite once broke a rule is still caught (a check that missed them would pass vacuously). The
    examples import a test module that is not in tests/ (test_example), or the first test above would flag them."""
    files = {
        "test_example.py": "def trial_results(x): ...\n",
        "test_a.py": "from tests.test_example import trial_results\n",
        "test_b.py": "import tests.test_example as helpers\n",
        "test_c.py": "def f():\n    from tests import test_example\n",
        "test_d.py": 'SCRIPT = """\nimport tests.test_example as helpers\nhelpers.run()\n"""\n',  # for `python -c`
        "test_e.py": "from .test_example import trial_results\n",
        "test_f.py": "import test_example\n",
        "test_g.py": "import importlib\nhelpers = importlib.import_module('tests.test_example')\n",
        "audit.py": "def table():\n    from tests.test_example import trial_results\n",
        "test_fine.py": "from tests.ray_nodes import free_port\nimport tests_elsewhere.test_example\n"
                        "from other import test_example\nIMPORTS = 'import nothing from tests.test_example'\n",
    }
    assert sorted(p.split()[0] for p in import_problems(files)) == [
        "audit.py", "test_a.py", "test_b.py", "test_c.py", "test_d.py", "test_e.py", "test_f.py", "test_g.py"]

    files = {
        "ray_nodes.py": "def free_port(): ...\n",
        "conftest.py": "import pytest\n@pytest.fixture\ndef model_dir(): ...\n",
        "hub_server.py": "@pytest.fixture\ndef local_hub(): ...\n",
        "test_dashboard_browser.py": "def free_port(): ...\n",
        "test_x.py": "@pytest.fixture(scope='module')\ndef model_dir(): ...\n",
        "test_y.py": "def run(): ...\nfrom tests.hub_server import local_hub\n",  # a local helper, an imported fixture
        "test_z.py": "def run(): ...\n",
    }
    assert sorted(copy_problems(files)) == ["test_dashboard_browser.py defines free_port again (it is ray_nodes.py's)",
                                            "test_x.py defines model_dir again (it is conftest.py's)"]
