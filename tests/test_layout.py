"""The package's layering: the library is the bottom layer and imports nothing above it."""

import ast
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]
LIBRARY = REPO / "normalized_faces"
# What sits above the library: the jobs, the entry points and everything that drives them.
ABOVE = ("data_prep", "export", "experiments", "benchmarks", "tests", "train_main", "demo_main")


def _imports(path: pathlib.Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):  # module level and inside functions alike
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module


def test_the_library_imports_nothing_above_it():
    files = sorted(LIBRARY.rglob("*.py"))
    assert len(files) > 20
    upward = [
        f"{path.relative_to(REPO)}:{line} imports {name}"
        for path in files
        for line, name in _imports(path)
        if name.split(".")[0] in ABOVE
    ]
    assert not upward, "the library must not import the layers above it:\n" + "\n".join(upward)


def test_the_check_sees_function_level_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from data_prep import job\n")
    assert [name for _, name in _imports(probe)] == ["data_prep"]
