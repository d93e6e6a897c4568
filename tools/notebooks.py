"""Keep the committed notebooks clean.

    python tools/notebooks.py strip   [NOTEBOOK ...]   drop outputs, except cells tagged nbval-check-output
    python tools/notebooks.py refresh [NOTEBOOK ...]   execute (VITLAB_QUICK=1) and keep only tagged outputs

Cells tagged ``nbval-check-output`` hold small deterministic outputs that nbval
compares on every ``make test``; everything else is committed without outputs
(tests/test_notebooks.py enforces it).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat

CHECK_TAG = "nbval-check-output"
NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def strip(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type != "code":
            continue
        if CHECK_TAG in cell.metadata.get("tags", []) and cell.outputs:
            # nbval only compares cells that look executed, so tagged cells keep a count.
            cell.execution_count = cell.execution_count or 1
            for output in cell.outputs:
                if "execution_count" in output:
                    output["execution_count"] = cell.execution_count
        else:
            cell.execution_count = None
            cell.outputs = []
    nb.metadata.pop("widgets", None)
    return nb


def refresh(path: Path) -> nbformat.NotebookNode:
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    os.environ["VITLAB_QUICK"] = "1"
    resources = {"metadata": {"path": str(path.parent)}}
    NotebookClient(nb, timeout=1200, kernel_name="python3", resources=resources).execute()
    return strip(nb)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("strip", "refresh"):
        print(__doc__)
        return 2
    paths = [Path(p) for p in argv[1:]] or sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    for path in paths:
        nb = refresh(path) if argv[0] == "refresh" else strip(nbformat.read(path, as_version=4))
        nbformat.validate(nb)
        nbformat.write(nb, path)
        print(f"{argv[0]}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
