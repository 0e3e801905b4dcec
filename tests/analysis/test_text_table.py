"""The benchmarks' text tables (`format_cell`, `text_table`) and figures (`analysis.plots.figure`)."""
import pytest

from latticeflow.analysis.plots import figure
from latticeflow.analysis.table import format_cell, text_table


@pytest.mark.parametrize("value, spec, text", [
    (0.25, "6.3f", " 0.250"),
    (None, "6.3f", "     —"),   # missing: an em dash right-aligned to the width
    (float("nan"), ".3f", "—"),  # no width: the bare dash
    (12, "5d", "   12"),
    ("x", "<4", "x   "),
])
def test_format_cell(value, spec, text):
    assert format_cell(value, spec) == text


def test_text_table_aligns_every_column_to_its_spec():
    columns = [("case", "<8"), ("steps", "6d"), ("ESS", "6.3f"), ("note", "")]
    text = text_table(columns, [["phi4", 120, 0.5, " ok"], ["u1", 7, None, ""], "  a free line"],
                      title="title", notes=["(a note)"])
    lines = text.splitlines()
    assert lines[0] == "title" and lines[-1] == "(a note)"
    assert lines[1] == "case      steps    ESS note"  # numbers right-aligned, text left-aligned, as the spec
    assert lines[2] == "-" * len(lines[1])
    assert lines[3] == "phi4        120  0.500  ok"
    assert lines[4] == "u1            7      —"  # trailing blanks stripped
    assert lines[5] == "  a free line"  # a string row as it is
    assert len(lines) == 7


def test_text_table_title_lines_and_no_title():
    assert text_table([("a", "<3")], [], title=["one", "two"]).splitlines() == ["one", "two", "a", "---"]
    assert text_table([("a", "<3")], []).splitlines() == ["a", "---"]


def test_figure_writes_the_png_and_closes_it(tmp_path):
    import matplotlib.pyplot as plt

    path = tmp_path / "f.png"
    with figure(str(path), 1, 2, figsize=(4, 2)) as (fig, axes):
        assert axes.shape == (1, 2)
        axes[0, 1].plot([0, 1], [1, 0])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.fignum_exists(fig.number)
