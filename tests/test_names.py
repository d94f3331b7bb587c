"""names.py is the leaf: the layers above import it, and imports run down the layers only."""
import ast

from conftest import ROOT

from imgclf import names

SRC = ROOT / "src" / "imgclf"


def imports(path) -> set[str]:
    """The imgclf modules a source file imports, as dotted names (relative imports resolved)."""
    package = ".".join(path.relative_to(SRC.parent).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            found |= {module} | {f"{module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m for m in found if m.startswith("imgclf")}


def test_names_imports_nothing_of_the_package():
    assert imports(SRC / "names.py") == set()


def test_user_error_has_one_import_path():
    for path in SRC.rglob("*.py"):
        found = {m for m in imports(path) if m.endswith(".UserError")}
        assert found <= {"imgclf.names.UserError"}, path


def test_cpu_count_is_this_process_s_share():
    import os

    assert 1 <= names.cpu_count() <= (os.cpu_count() or 1)
