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


def test_imports_run_down_the_layers():
    assert not {m for m in imports(SRC / "hyperparameters.py") if m.startswith("imgclf.hpo")}
    for module in ("search.py", "study.py", "cli.py", "__init__.py"):  # the in-container tuner
        assert not {m for m in imports(SRC / "hpo" / module) if m.startswith("imgclf.launch")}, module
    for path in (SRC / "launch").rglob("*.py"):  # the launcher takes UserError from the leaf
        assert "imgclf.contract.UserError" not in imports(path), path


def test_contract_still_offers_user_error():
    from imgclf.contract import UserError

    assert UserError is names.UserError


def test_cpu_count_is_this_process_s_share():
    import os

    assert 1 <= names.cpu_count() <= (os.cpu_count() or 1)
