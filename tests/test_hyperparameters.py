"""The hyperparameter table: the copy in docs/training.md is generated from it, and stays so."""
import pytest
from conftest import ROOT

from imgclf.names import UserError
from imgclf.train import hyperparameters as hp


def test_the_table_in_docs_training_is_the_code_table():
    page = (ROOT / "docs" / "training.md").read_text()
    assert hp.with_table(page, hp.markdown_table()) == page, \
        "the table differs: run python -m imgclf.train.hyperparameters --write docs/training.md"


def test_a_new_hyperparameter_reaches_the_table_between_the_markers():
    extra = hp.Hyperparameter("new-thing", int, 3, "a | b <c>", low=1)
    text = f"intro\n{hp.TABLE_BEGIN}\nold table\n{hp.TABLE_END}\nrest\n"
    out = hp.with_table(text, hp.markdown_table((*hp.HYPERPARAMETERS, extra)))
    assert out.startswith(f"intro\n{hp.TABLE_BEGIN}\n\n| name |") and out.endswith(f"{hp.TABLE_END}\nrest\n")
    assert "old table" not in out
    assert "| `new-thing` | int | `3` | [1, inf) | a \\| b &lt;c> |" in out
    with pytest.raises(ValueError, match="markers"):
        hp.with_table("no markers here", "| table |")


def test_profiler_interval_is_unset_unless_given_and_has_one_minimum():
    assert hp.parse({}).profiler_interval_ms is None  # monitor settings fill it from profilerconfig.json or the default
    assert hp.parse({"profiler-interval-ms": "500"}).profiler_interval_ms == 500
    with pytest.raises(UserError, match=r"profiler-interval-ms=49 is out of range \[50, inf\)"):
        hp.parse({"profiler-interval-ms": "49"})
