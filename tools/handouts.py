"""Student handouts: ``make handouts`` writes ``handouts/``, one notebook per lesson without its worked solutions.

    python tools/handouts.py --out handouts                     every lesson
    python tools/handouts.py --out handouts notebooks/01_*.ipynb  some lessons

Every lesson ends with exercises, each answered by a worked-solution cell (tagged ``solution``) that computes the
answer and then checks it with ``assert`` statements. In a handout each solution cell becomes two cells:

* a **stub** (tagged ``exercise-stub``) that stops with ``NotImplementedError("Exercise N is not done yet ...")``
  and names what the check reads (``p7``, ``shape``, ...): the student replaces it with an answer;
* an **autograder cell** (tagged ``autograder``, collapsed and marked read-only for JupyterLab) holding the
  solution's asserts: it fails until the answer above it is right.

The "**Solution N**" heading above each solution says what to do instead. Everything else in the lesson stays as
it is (outputs cleared); a note under the title says that this is the student edition.

Which asserts become the autograder: the solution's top-level ``assert`` statements, and top-level loops or ``if``
blocks made of asserts only, provided that nothing later in the solution reassigns a name they read (the
autograder runs after the whole answer, so such an assert would check another value than the one it checked in
the solution). An assert inside a loop that also computes (``for b in sizes: steps = ...; assert steps == ...``)
cannot be separated from the computation without giving the answer away: it goes with the solution, and the
build prints each exercise left with no autograder so that its lesson's author can lift the check out of the loop.

Why not nbgrader: its autograding needs a course directory, a database and its server extensions installed
for the instructor, and its cell metadata would still have to be produced from these solution cells, which mix
the answer with its checks; the handouts here are plain notebooks that run in any JupyterLab with nothing more
than the course's own set-up, and their autograder cells are the checks that ``make test`` already keeps
honest on the instructor's edition. An instructor who uses nbgrader can take the ``autograder`` cells as its
"autograded tests" cells.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
SOLUTION_TAG = "solution"
STUB_TAG = "exercise-stub"
CHECK_TAG = "autograder"
NOT_DONE = "not done yet"
STUDENT_NOTE = ("*Student edition: the exercises at the end of this lesson come without their worked solutions. "
                "Each has a cell for your answer, which stops with \"not done yet\" until you replace it, and a "
                "collapsed **autograder** cell below it that passes once your answer is right.*")
_SOLUTION_HEADING = re.compile(r"^\s*\*\*Solution\s+(\d+)\*\*\s*$")
_EXERCISE_ITEM = re.compile(r"^(\d+)\.\s+\*\*(.+?)\*\*", re.M)


@dataclass
class Split:
    """One worked solution taken apart: what the student writes, and the asserts kept as its autograder."""

    work: str                    #: the solution without its lifted asserts (what the student's answer replaces)
    checks: str                  #: the lifted asserts, one statement per line (empty: no autograder possible)
    reads: list[str] = field(default_factory=list)   #: names the checks read that the solution itself defines
    lifted: int = 0              #: asserts moved into the autograder
    left_in: int = 0             #: asserts that stay with the solution (inside a loop that also computes)


def _leaves(statement: ast.stmt) -> list[ast.stmt]:
    """The simple statements inside a compound one (itself if it is simple)."""
    blocks = [getattr(statement, name, None) for name in ("body", "orelse", "finalbody")]
    children = [child for block in blocks if isinstance(block, list) for child in block]
    if not children or isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [statement]
    return [leaf for child in children for leaf in _leaves(child)]


def _is_check(statement: ast.stmt) -> bool:
    """An assert, or a loop / ``if`` made of asserts only (``for d in (0, 2): assert ...``)."""
    if isinstance(statement, ast.Assert):
        return True
    if not isinstance(statement, (ast.For, ast.If, ast.While)):
        return False
    return all(isinstance(leaf, (ast.Assert, ast.Pass)) for leaf in _leaves(statement))


def _count_asserts(statement: ast.stmt) -> int:
    return sum(isinstance(node, ast.Assert) for node in ast.walk(statement))


def _loaded(statement: ast.stmt) -> set[str]:
    return {node.id for node in ast.walk(statement) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)}


def _stored(statement: ast.stmt) -> set[str]:
    """Names a statement binds at the notebook's top level (not those local to a function or comprehension)."""
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            return
        if isinstance(node, (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            return
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(statement)
    return names


def split_solution(source: str) -> Split:
    """Take a solution cell apart into the student's part and the asserts that check it (see the module doc)."""
    tree = ast.parse(source)
    statements = tree.body
    lines = source.splitlines()
    lifted: list[ast.stmt] = []
    for index, statement in enumerate(statements):
        if not _is_check(statement):
            continue
        alone = not any(other is not statement and other.lineno <= statement.end_lineno
                        and other.end_lineno >= statement.lineno for other in statements)   # no `a = 1; assert a`
        later = set().union(*(_stored(s) for s in statements[index + 1:] if not _is_check(s)))
        if alone and not (_loaded(statement) & later):
            lifted.append(statement)
    taken = {line for s in lifted for line in range(s.lineno, s.end_lineno + 1)}
    work = "\n".join(line for number, line in enumerate(lines, 1) if number not in taken).strip("\n")
    work_statements = [s for s in statements if s not in lifted]
    defined = set().union(*(_stored(s) for s in work_statements)) if work_statements else set()
    reads = sorted(set().union(*(_loaded(s) for s in lifted)) & defined) if lifted else []
    return Split(work=work, checks="\n".join(ast.unparse(s) for s in lifted), reads=reads,
                 lifted=sum(_count_asserts(s) for s in lifted), left_in=sum(_count_asserts(s) for s in work_statements))


def exercise_titles(nb: nbformat.NotebookNode) -> dict[int, str]:
    """Exercise number -> its bold title in the lesson's "## Exercises" list (``1. **Round trip.** ...``)."""
    for cell in nb.cells:
        if cell.cell_type == "markdown" and "## Exercises" in cell.source:
            text = cell.source.split("## Exercises", 1)[1]
            return {int(number): title.strip().rstrip(".") for number, title in _EXERCISE_ITEM.findall(text)}
    return {}


def stub_source(number: int, title: str | None, split: Split) -> str:
    """The cell the student replaces: it says what to do and stops with a clear error until it is replaced."""
    head = f"# Exercise {number}" + (f" · {title}" if title else "") + ": replace this cell with your answer, then "
    head += "run the autograder cell below." if split.checks else "compare it with your instructor's solution."
    lines = [head]
    if split.reads:
        lines.append(f"# The autograder reads: {', '.join(split.reads)}")
    lines.append(f'raise NotImplementedError("Exercise {number} is {NOT_DONE}: replace this cell with your answer'
                 + (', then run the autograder cell below it")' if split.checks else '")'))
    return "\n".join(lines)


def check_source(number: int, split: Split) -> str:
    """The autograder cell: the solution's asserts, run after the student's answer."""
    if not split.checks:
        return (f"# Exercise {number} has no autograder: its solution checks itself inside a loop that also\n"
                "# computes the answer, which cannot be separated without giving it away.")
    return f"# Autograder for exercise {number}: passes once your answer above is right.\n{split.checks}"


def make_handout(nb: nbformat.NotebookNode, name: str = "") -> tuple[nbformat.NotebookNode, list[Split]]:
    """The student edition of a lesson and the solutions it took apart, in order."""
    titles = exercise_titles(nb)
    cells: list[nbformat.NotebookNode] = []
    splits: list[Split] = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        if SOLUTION_TAG not in cell.metadata.get("tags", []):
            cells.append(cell)
            if index == 0:
                cells.append(nbformat.v4.new_markdown_cell(STUDENT_NOTE, id="handout-note"))
            continue
        number = len(splits) + 1
        split = split_solution(cell.source)
        splits.append(split)
        previous = cells[-1] if cells else None
        if previous is not None and previous.cell_type == "markdown":
            heading = _SOLUTION_HEADING.match(previous.source)
            if heading:
                number = int(heading.group(1))
                previous.source = (f"**Exercise {number}: your answer.** Replace the next cell (it stops with "
                                   f"*{NOT_DONE}*) with your code; the collapsed cell after it is the autograder: "
                                   "run it, and it passes once your answer is right.")
        tags = [t for t in cell.metadata.get("tags", []) if t != SOLUTION_TAG]
        cells.append(nbformat.v4.new_code_cell(stub_source(number, titles.get(number), split),
                                               id=f"exercise-{number}-stub", metadata={"tags": [*tags, STUB_TAG]}))
        cells.append(nbformat.v4.new_code_cell(
            check_source(number, split), id=f"exercise-{number}-autograder",
            metadata={"tags": [CHECK_TAG], "editable": False, "deletable": False,
                      "jupyter": {"source_hidden": True}}))
    handout = nbformat.v4.new_notebook(cells=cells, metadata=nb.metadata)
    handout.metadata.pop("widgets", None)
    handout.metadata["vitlab"] = {"handout": True, "lesson": name}
    return handout, splits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "handouts", help="default: handouts/")
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every numbered lesson in notebooks/")
    args = parser.parse_args(argv)
    notebooks = args.notebooks or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    args.out.mkdir(parents=True, exist_ok=True)
    unchecked = []
    for path in notebooks:
        handout, splits = make_handout(nbformat.read(path, as_version=4), path.stem)
        nbformat.validate(handout)
        nbformat.write(handout, args.out / path.name)
        unchecked += [f"{path.stem} exercise {n}" for n, s in enumerate(splits, 1) if not s.checks]
        print(f"{args.out / path.name}: {len(splits)} exercises, {sum(s.lifted for s in splits)} asserts in "
              f"autograder cells, {sum(s.left_in for s in splits)} left inside a solution's loop", flush=True)
    if unchecked:
        print("no autograder (the solution's asserts sit inside a loop that computes the answer): "
              + "; ".join(unchecked))
    return 0


if __name__ == "__main__":
    sys.exit(main())
