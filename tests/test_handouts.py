"""``make handouts`` (tools/handouts.py): student notebooks without the worked solutions, with autograder cells.

Every lesson's handout is built and searched for solution code; one handout (lesson 01, quick mode) is
executed twice: as handed out, where each stub must stop with the "not done yet" error and no autograder
cell may pass, and with each solution's own code pasted back into its stub, where every autograder cell must pass.
"""

from __future__ import annotations

import copy
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError
from tools import handouts

ROOT = Path(__file__).resolve().parents[1]
LESSONS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
EXECUTED = "01_patchify_and_linear_mapping"


def tagged(nb: nbformat.NotebookNode, tag: str) -> list[int]:
    return [i for i, cell in enumerate(nb.cells) if tag in cell.metadata.get("tags", [])]


def code_lines(cells: list[nbformat.NotebookNode]) -> set[str]:
    return {line.strip() for cell in cells if cell.cell_type == "code" for line in cell.source.splitlines()}


# ---- taking a solution apart -------------------------------------------------------------------

def test_split_lifts_top_level_asserts_and_pure_check_loops_only():
    source = ("x = 2\ny = x * 3  # the answer\nassert y == 6\nfor v in (1, 2):\n    assert v < y\n"
              "for s in (1, 2):\n    z = s * y\n    assert z > 0\n")
    split = handouts.split_solution(source)
    assert split.checks == "assert y == 6\nfor v in (1, 2):\n    assert v < y"
    assert split.work == "x = 2\ny = x * 3  # the answer\nfor s in (1, 2):\n    z = s * y\n    assert z > 0"
    assert split.reads == ["y"]              # the loop's own v is not something the student must define
    assert (split.lifted, split.left_in) == (2, 1)


def test_an_assert_on_a_name_the_solution_reassigns_later_stays_with_the_solution():
    # The autograder runs after the whole answer: lifted, `assert a == 1` would check the second a and fail.
    split = handouts.split_solution("a = 1\nassert a == 1\na = 2\nassert a == 2\n")
    assert split.checks == "assert a == 2"
    assert split.work == "a = 1\nassert a == 1\na = 2"


def test_a_solution_with_no_liftable_assert_gets_a_stub_that_says_so():
    split = handouts.split_solution("for b in (32, 128):\n    steps = 54000 // b\n    assert steps > 0\n")
    assert split.checks == "" and split.left_in == 1
    stub = handouts.stub_source(2, "Steps per epoch", split)
    assert handouts.NOT_DONE in stub and "autograder" not in stub.splitlines()[-1]
    assert "no autograder" in handouts.check_source(2, split)


# ---- every lesson's handout --------------------------------------------------------------------

@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_handout_keeps_no_solution_code_and_has_a_stub_and_an_autograder_per_exercise(path: Path):
    lesson = nbformat.read(path, as_version=4)
    solutions = [cell for cell in lesson.cells if handouts.SOLUTION_TAG in cell.metadata.get("tags", [])]
    handout, splits = handouts.make_handout(copy.deepcopy(lesson), path.stem)
    nbformat.validate(handout)
    assert not tagged(handout, handouts.SOLUTION_TAG)
    stubs, checks = tagged(handout, handouts.STUB_TAG), tagged(handout, handouts.CHECK_TAG)
    assert len(stubs) == len(checks) == len(splits) == len(solutions) >= 2
    assert [c - s for s, c in zip(stubs, checks)] == [1] * len(stubs)   # each autograder right below its stub
    for index in stubs:
        last = handout.cells[index].source.splitlines()[-1]
        assert last.startswith("raise NotImplementedError(") and handouts.NOT_DONE in last
    assert all(handout.cells[i].metadata["jupyter"]["source_hidden"] for i in checks)
    assert not any(cell.get("outputs") for cell in handout.cells if cell.cell_type == "code")
    # No line of a solution's own code (comments included) is left, unless the lesson has that line elsewhere too.
    elsewhere = code_lines([cell for cell in lesson.cells if cell not in solutions])
    kept = code_lines(handout.cells)
    for number, split in enumerate(splits, 1):
        own = {line.strip() for line in split.work.splitlines()} - elsewhere - {""}
        assert not own & kept, f"exercise {number} leaks its solution: {sorted(own & kept)[:3]}"
    # The autograder cells hold the solutions' asserts, nothing else.
    for index, split in zip(checks, splits):
        assert handout.cells[index].source.endswith(split.checks)
    assert sum(s.lifted for s in splits) >= len(splits) - 1


def test_make_handouts_writes_one_student_notebook_per_lesson(tmp_path: Path, capsys):
    assert handouts.main(["--out", str(tmp_path / "handouts")]) == 0
    written = sorted(p.name for p in (tmp_path / "handouts").glob("*.ipynb"))
    assert written == [p.name for p in LESSONS]
    for name in written:
        nb = nbformat.read(tmp_path / "handouts" / name, as_version=4)
        assert nb.metadata["vitlab"] == {"handout": True, "lesson": name[:-len(".ipynb")]}
        assert handouts.STUDENT_NOTE in nb.cells[1].source
    assert "asserts in autograder cells" in capsys.readouterr().out


# ---- one handout executed ----------------------------------------------------------------------

#: Seconds one cell may take: the executed lesson's slowest quick-mode cell takes a few seconds. Twice (of about six
#: runs) a whole make test hung here with kernel and client both idle, a reply lost between them, until nbclient's
#: timeout; a cell that overruns this is that hang, not slow work, so the notebook is run once more in a new kernel.
CELL_TIMEOUT_S = 120


def execute(nb: nbformat.NotebookNode, allow_errors: bool) -> nbformat.NotebookNode:
    """Run the notebook top to bottom from notebooks/ (where the lessons' relative paths hold); one retry, from a
    fresh copy in a fresh kernel, if a cell's reply never arrives (see :data:`CELL_TIMEOUT_S`)."""
    def run_once() -> nbformat.NotebookNode:
        run = copy.deepcopy(nb)
        NotebookClient(run, timeout=CELL_TIMEOUT_S, kernel_name="python3", allow_errors=allow_errors,
                       resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
        return run

    try:
        return run_once()
    except CellTimeoutError:
        print(f"a cell gave no reply within {CELL_TIMEOUT_S} s (lost kernel message?): running the handout again")
        return run_once()


def errors(cell: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [output for output in cell.get("outputs", []) if output.output_type == "error"]


def test_a_handout_stops_at_each_stub_and_passes_with_the_solutions_pasted_back(mnist_available, monkeypatch):
    monkeypatch.setenv("VITLAB_QUICK", "1")   # the kernel inherits it: the lesson's quick mode
    handout, splits = handouts.make_handout(nbformat.read(ROOT / "notebooks" / f"{EXECUTED}.ipynb", as_version=4),
                                            EXECUTED)
    stubs, checks = tagged(handout, handouts.STUB_TAG), tagged(handout, handouts.CHECK_TAG)
    assert all(split.checks for split in splits)

    handed_out = execute(copy.deepcopy(handout), allow_errors=True)
    for index in stubs:
        (error,) = errors(handed_out.cells[index])
        assert error.ename == "NotImplementedError" and handouts.NOT_DONE in error.evalue, error
    for index in checks:   # without an answer the autograder fails: it does not pass on the lesson's own names
        assert [e.ename for e in errors(handed_out.cells[index])] in (["NameError"], ["AssertionError"]), index
    others = [i for i in range(len(handout.cells)) if i not in stubs + checks]
    assert not [i for i in others if errors(handed_out.cells[i])], "the lesson itself must run in the handout"

    pasted = copy.deepcopy(handout)
    for index, split in zip(stubs, splits):
        pasted.cells[index].source = split.work   # the student's answer: the solution's own code, its asserts gone
    pasted = execute(pasted, allow_errors=False)  # raises CellExecutionError at the first failing cell
    assert all(not errors(pasted.cells[i]) and pasted.cells[i].execution_count for i in checks)
