"""The package's shape, as docs/architecture.md draws it: layers that import only downward (import-linter's
contracts in pyproject.toml), no import cycle between modules, no module state flipped after import, no
reaching into another package's private attributes, no module importing another one's private names, and
files and functions of a readable size."""

import ast
import subprocess
import sys
from pathlib import Path

import grimp

PROJECT = Path(__file__).resolve().parents[1]
PACKAGE = PROJECT / "src" / "frcnn_pipeline"
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60
# A function longer than MAX_FUNCTION_LINES says why in a comment starting so, right below its signature.
LONG_FUNCTION_MARK = "# Long because"
# Private names of torch and torchvision with no public equivalent, each used in one place, and why.
ALLOWED_PRIVATE = {
    ("layers/backend.py", "_C"): "torch has no public way to ask whether a device has a kernel for an op",
    ("layers/backend.py", "_dispatch_key_for_device"): "the same probe",
    ("layers/backend.py", "_dispatch_has_kernel_for_dispatch_key"): "the same probe",
    ("layers/cpu_roi_align.py", "_roi_align_backward"): "torchvision's backward op, by its registered name",
    ("engine/memory_budget.py", "_cdata"): "storage identity: the estimate's meta tensors have no address",
}


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _relative(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def test_layers_import_only_downward():
    """`lint-imports` checks pyproject.toml's [tool.importlinter] contracts: the layers, and a core that
    imports no Kedro."""
    result = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), str(PROJECT / "pyproject.toml")],
        capture_output=True, text=True, cwd=PROJECT, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_module_imports_itself_through_others():
    graph = grimp.build_graph("frcnn_pipeline")
    cycles = []
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if state.get(imported) == 1:
                cycles.append([*path[path.index(imported) :], imported])
            elif imported not in state:
                visit(imported, [*path, imported])
        state[module] = 2

    for module in sorted(graph.modules):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_no_module_level_state_is_reassigned():
    """No `global` statement: what a run depends on is passed, not flipped in a module."""
    found = [
        f"{_relative(path)}:{node.lineno} global {', '.join(node.names)}"
        for path in _sources()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Global)
    ]
    assert not found, found


def test_no_private_attribute_of_another_package_is_read():
    """`x._name` only on self, cls, or objects of this package's own private classes."""
    found = []
    for path in _sources():
        tree = ast.parse(path.read_text())
        own = {node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef | ast.FunctionDef)}
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and node.attr.startswith("_")) or node.attr.startswith(
                "__"
            ):
                continue
            base = node.value.id if isinstance(node.value, ast.Name) else None
            if base in {"self", "cls"} or base in own or (_relative(path), node.attr) in ALLOWED_PRIVATE:
                continue
            if base == "os" and node.attr == "_exit":  # documented: os._exit is public
                continue
            found.append(f"{_relative(path)}:{node.lineno} {ast.unparse(node)}")
    assert not found, found


def _imported_module(path: Path, node: ast.ImportFrom) -> str:
    """The absolute name of the module `node` imports from (relative imports resolved against `path`)."""
    if not node.level:
        return node.module or ""
    package = path.relative_to(PACKAGE.parent).with_suffix("").parts
    package = package[:-1]  # a module's package; an __init__'s own package is its folder
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def test_no_module_imports_another_modules_private_names():
    """A name one module of ours imports from another is public (no leading underscore): what a module keeps
    private, it alone uses."""
    found = [
        f"{_relative(path)}:{node.lineno} from {_imported_module(path, node)} import {alias.name}"
        for path in _sources()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and _imported_module(path, node).startswith("frcnn_pipeline")
        for alias in node.names
        if alias.name.startswith("_") and not alias.name.startswith("__")
    ]
    assert not found, found


def test_files_and_functions_stay_readable():
    long_files = [
        f"{_relative(path)}: {lines} lines"
        for path in _sources()
        if (lines := len(path.read_text().splitlines())) > MAX_FILE_LINES
    ]
    long_functions = []
    for path in _sources():
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            length = node.end_lineno - node.lineno + 1
            first = node.body[1] if ast.get_docstring(node) and len(node.body) > 1 else node.body[0]
            said_why = any(LONG_FUNCTION_MARK in line for line in lines[node.lineno - 1 : first.lineno])
            if length > MAX_FUNCTION_LINES and not said_why:
                long_functions.append(f"{_relative(path)}:{node.lineno} {node.name}: {length} lines")
    assert not long_files, long_files
    assert not long_functions, long_functions
