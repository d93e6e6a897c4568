"""Execute every lesson notebook and render it to HTML, plus an index page: ``make html``.

    python tools/build_site.py --out site          full mode (real training in later lessons)
    VITLAB_QUICK=1 python tools/build_site.py      quick mode, as in the tests

Interactive widgets cannot run in a static page; their outputs are replaced by a
short note (every widget in the course sits next to a static figure showing the same), and
progress bars, which only matter while a cell runs, are dropped.
"""

from __future__ import annotations

import argparse
import html
import os
import sys
import time
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter
from nbconvert.preprocessors import ExecutePreprocessor

ROOT = Path(__file__).resolve().parents[1]
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = ("<p style='color:#666;font-style:italic'>[interactive widget: open this notebook in JupyterLab "
               "(<code>make lab</code>) to use it; the static figure next to it shows the same idea]</p>")


def _is_progress_bar(output: nbformat.NotebookNode) -> bool:
    """tqdm's notebook bar: a widget whose text fallback reads like 'epochs:  0%|...| 0/3'."""
    text = output.get("data", {}).get("text/plain", "")
    return "%|" in ("".join(text) if isinstance(text, list) else text)


def replace_widgets(nb: nbformat.NotebookNode) -> None:
    """Drop progress bars (they only matter while a cell runs) and put a note where an interactive widget was."""
    for cell in nb.cells:
        outputs = []
        for output in cell.get("outputs", []):
            if WIDGET_MIME in output.get("data", {}):
                if _is_progress_bar(output):
                    continue
                output["data"] = {"text/html": WIDGET_NOTE}
            outputs.append(output)
        if cell.cell_type == "code":
            cell.outputs = outputs
    nb.metadata.pop("widgets", None)


def title_and_summary(nb: nbformat.NotebookNode) -> tuple[str, str]:
    first = nb.cells[0].source.strip().splitlines()
    title = first[0].lstrip("# ").strip()
    body = " ".join(line.strip() for line in first[1:] if line.strip())
    body = body.replace("**", "").replace("`", "").replace("*", "")   # plain text for the index
    return title, body.split(". ")[0].rstrip(".") + "."


def render(path: Path, out: Path, timeout: int) -> tuple[str, str, float]:
    nb = nbformat.read(path, as_version=4)
    started = time.perf_counter()
    ExecutePreprocessor(timeout=timeout, kernel_name="python3").preprocess(
        nb, {"metadata": {"path": str(path.parent)}})
    replace_widgets(nb)
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
    (out / f"{path.stem}.html").write_text(body)
    title, summary = title_and_summary(nb)
    return title, summary, time.perf_counter() - started


def write_index(out: Path, entries: list[tuple[str, str, str]], quick: bool) -> None:
    items = "\n".join(
        f"<li><a href='{html.escape(name)}.html'>{html.escape(title)}</a><p>{html.escape(summary)}</p></li>"
        for name, title, summary in entries)
    mode = "quick mode (VITLAB_QUICK=1: shortened training)" if quick else "full mode"
    (out / "index.html").write_text(f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>vitlab: a Vision Transformer from scratch</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 820px; margin: 2em auto; line-height: 1.5; color: #222; }}
li {{ margin-bottom: 1em; }} li a {{ font-size: 1.15em; font-weight: 600; }} li p {{ margin: 0.2em 0 0 0; }}
.note {{ color: #666; }}
</style></head><body>
<h1>vitlab: a Vision Transformer from scratch</h1>
<p>A step-by-step course in PyTorch: every lesson builds one piece by hand and checks it against the
<code>vitlab</code> package. Work through the lessons in order.</p>
<ol start="0">
{items}
</ol>
<p class="note">Rendered {time.strftime('%Y-%m-%d %H:%M')} in {mode}.</p>
</body></html>
""")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "site"))
    parser.add_argument("--timeout", type=int, default=7200, help="seconds per cell")
    parser.add_argument("notebooks", nargs="*", help="default: every numbered lesson")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [Path(p) for p in args.notebooks] or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    entries = []
    for path in paths:
        title, summary, seconds = render(path, out, args.timeout)
        entries.append((path.stem, title, summary))
        print(f"rendered {path.name} -> {out / (path.stem + '.html')} ({seconds:.0f} s)", flush=True)
    write_index(out, entries, os.environ.get("VITLAB_QUICK", "0") not in ("", "0"))
    print(f"index: {out / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
