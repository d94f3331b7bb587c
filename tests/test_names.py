"""names.py is the leaf: the layers above import it, and imports run down the layers only."""
from test_layers import SRC, imports

from imgclf import names


def test_names_imports_nothing_of_the_package():
    assert imports(SRC / "names.py") == set()


def test_user_error_has_one_import_path():
    for path in SRC.rglob("*.py"):
        found = {m for m in imports(path) if m.endswith(".UserError")}
        assert found <= {"imgclf.names.UserError"}, path


def test_cpu_count_is_this_process_s_share():
    import os

    assert 1 <= names.cpu_count() <= (os.cpu_count() or 1)
