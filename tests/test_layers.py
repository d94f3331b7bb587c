"""The package's layers and the imports allowed between them (docs/architecture.md draws them).

    python tests/test_layers.py     # modules per layer and the imports that break the rules

Each folder is a layer; the root holds the leaves every layer may use (names.py, commandline.py,
callbacks.py).
An import counts wherever it stands, at module level or inside a function.
"""
from __future__ import annotations

import ast
import sys
from collections import Counter
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "imgclf"
LEAVES = {"imgclf", "names", "commandline"}  # the package, names.py, commandline.py: every layer imports them
# layer -> the layers it may import besides itself and the leaves
ALLOWED = {
    "names": set(),
    "callbacks": set(),
    "artifact": set(),  # what training writes and serving reads: the bottom layer
    "serve": {"artifact"},  # serving never reaches into training
    "debug": {"artifact", "callbacks"},
    "tracking": {"artifact", "callbacks", "debug"},
    "train": {"artifact", "callbacks", "debug", "tracking"},  # the job wires the observers in
    "hpo": {"artifact", "callbacks", "tracking", "train"},
    "monitor": {"artifact"},  # drift in captured traffic: reads the baseline, never loads the model
    "launch": {"artifact", "debug", "hpo", "monitor", "serve", "tracking", "train"},  # the client: names and tables only
    "programs": {"train"},
}
MAX_ROOT_MODULES = 8


def layer_of(module: str) -> str:
    """The layer of a dotted module name: `imgclf.serve.front` -> serve, `imgclf.names` -> names."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and not parts[1].startswith("__") else "imgclf"  # imgclf.__version__


def module_name(path: Path, src: Path = SRC) -> str:
    parts = path.relative_to(src.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, src: Path = SRC) -> set[str]:
    """The imgclf modules a source file imports, as dotted names (relative imports resolved)."""
    package = ".".join(path.relative_to(src.parent).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            found |= {f"{module}.{a.name}" for a in node.names}  # `from .. import train` imports imgclf.train
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m for m in found if m == "imgclf" or m.startswith("imgclf.")}


def foreign_imports(src: Path = SRC) -> list[tuple[str, str]]:
    """(importing module, imported module) for each import that breaks ALLOWED."""
    found = []
    for path in sorted(src.rglob("*.py")):
        layer = layer_of(module_name(path, src))
        for imported in sorted(imports(path, src)):
            other = layer_of(imported)
            if other != layer and other not in LEAVES and other not in ALLOWED[layer]:
                found.append((module_name(path, src), imported))
    return found


def modules_per_layer(src: Path = SRC) -> Counter:
    return Counter(layer_of(module_name(p, src)) if p.parent != src else "(root)" for p in src.rglob("*.py"))


def test_every_layer_imports_only_the_layers_under_it():
    assert foreign_imports() == []


def test_every_module_belongs_to_a_known_layer():
    unknown = {layer_of(module_name(p)) for p in SRC.rglob("*.py")} - set(ALLOWED) - LEAVES
    assert unknown == set()


def test_the_package_root_holds_few_modules():
    assert modules_per_layer()["(root)"] <= MAX_ROOT_MODULES


def test_the_rule_finds_a_wrong_way_import(tmp_path):
    package = tmp_path / "imgclf"
    (package / "serve").mkdir(parents=True)
    (package / "train").mkdir()
    (package / "serve" / "handler.py").write_text("def f():\n    from .. import train\n")
    (package / "train" / "data.py").write_text("from ..serve import handler\nfrom ..names import UserError\n")
    assert foreign_imports(package) == [("imgclf.serve.handler", "imgclf.train"),
                                        ("imgclf.train.data", "imgclf.serve.handler")]


def main() -> int:
    for layer, count in sorted(modules_per_layer().items()):
        print(f"{layer:10} {count} modules")
    wrong = foreign_imports()
    for module, imported in wrong:
        print(f"{module} imports {imported}")
    print(f"{len(wrong)} foreign imports")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
