"""The committed notebooks are lessons: numbered, output-stripped, with ids, exercises and hidden solutions.

Execution itself is nbval's job (``make test`` runs ``pytest --nbval-lax notebooks``).
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
CHECK_TAG = "nbval-check-output"


def test_lessons_are_numbered_in_sequence():
    numbers = [int(p.name[:2]) for p in NOTEBOOKS]
    assert numbers[:6] == [0, 1, 2, 3, 4, 5], numbers
    assert len(numbers) == len(set(numbers)), "two lessons share a number"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs_except_tagged_cells(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    for index, cell in enumerate(nb.cells):
        assert cell.get("id"), f"cell {index} of {path.name} has no id"
        if cell.cell_type != "code":
            continue
        if CHECK_TAG in cell.metadata.get("tags", []):
            assert cell.outputs, f"cell {index} of {path.name} is tagged {CHECK_TAG} but has no output to compare"
            for output in cell.outputs:
                assert output.output_type in ("stream", "execute_result"), \
                    f"tagged cell {index} of {path.name} keeps a {output.output_type} output (images are not compared)"
        else:
            assert not cell.outputs, f"cell {index} of {path.name} is committed with outputs: run tools/notebooks.py strip"
            assert cell.execution_count is None, f"cell {index} of {path.name} keeps an execution count"
    assert "widgets" not in nb.metadata, f"{path.name} carries saved widget state"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_is_a_lesson(path):
    nb = nbformat.read(path, as_version=4)
    cells = nb.cells
    assert cells[0].cell_type == "markdown" and cells[0].source.startswith("# Lesson"), "starts with a title + intro"
    sources = "\n".join(c.source for c in cells)
    assert "Check against `vitlab`" in sources or "check against `vitlab`" in sources.lower()
    exercise_header = next(i for i, c in enumerate(cells) if c.cell_type == "markdown" and "## Exercises" in c.source)
    solutions = [c for c in cells[exercise_header:] if c.cell_type == "code"]
    assert 2 <= len(solutions) <= 4, "two or three exercises, each with a worked solution"
    for cell in solutions:
        assert cell.metadata.get("jupyter", {}).get("source_hidden") is True, "solutions are collapsed by default"
        assert "assert" in cell.source, "a solution checks its own answer, so nbval keeps it honest"
    figures = sum("plt.show()" in c.source or "plot_" in c.source for c in cells if c.cell_type == "code")
    assert figures >= 1, "a lesson shows at least one figure"
    assert any(CHECK_TAG in c.metadata.get("tags", []) for c in cells), "at least one output is compared by nbval"


def test_notebooks_use_no_absolute_paths():
    for path in NOTEBOOKS:
        text = path.read_text()
        assert not re.search(r"/work/|/home/\w+|C:\\\\", text), f"{path.name} hard-codes a machine path"


def test_lessons_train_through_the_library_not_a_subprocess():
    """Lessons call vitlab.train_run / fit directly: a subprocess hides errors and progress from the student."""
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
        assert "subprocess" not in code and "os.system" not in code, f"{path.name} shells out"
