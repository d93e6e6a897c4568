"""Build the course website: ``make html`` (``make html QUICK=1`` for a fast build).

    python tools/build_site.py --out site                 execute every lesson (full mode), render
    VITLAB_QUICK=1 python tools/build_site.py             quick mode, as in the tests
    python tools/build_site.py --execute 00 01            execute only these lessons, render the rest as committed

The site is Sphinx with myst-nb and sphinx-book-theme: the stack Jupyter Book 1 is made of, used
directly so that the API reference (autodoc, from vitlab's docstrings) and the lessons live in one
site with one sidebar, one search box and previous/next links. Steps:

1. every lesson is executed from ``notebooks/`` (so its relative paths hold) with nbclient;
2. outputs are cleaned for a static page: progress bars are dropped (they only matter while a cell
   runs) and an interactive widget is replaced by a note (each widget in the course sits next to a
   static figure that shows the same); exercise solutions get myst-nb's ``hide-cell`` tag, so the
   page shows them collapsed behind a toggle;
3. the staged sources (``build/site-src``: the executed lessons, the landing page from
   ``docs/index.md`` with the lesson list filled in, one API page per module, ``docs/conf.py``) are
   rendered by Sphinx into ``--out``.
"""

from __future__ import annotations

import argparse
import ast
import re
import shutil
import sys
import time
from pathlib import Path

import nbformat
from nbconvert.preprocessors import ExecutePreprocessor

from vitlab.core.runtime import quick_mode

ROOT = Path(__file__).resolve().parents[1]
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = ("<p style='color:#666;font-style:italic'>[interactive widget: open this notebook in JupyterLab "
               "(<code>make lab</code>) to use it; the static figure next to it shows the same idea]</p>")
LESSONS_MARKER = "<!-- lessons -->"
PART_TWO_FROM = 12   # lessons 00-11 build a ViT (Part I); 12 on extend it (Part II)
PART_TITLES = ("Part I · a ViT from scratch", "Part II · beyond the basic ViT")


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


def hide_solutions(nb: nbformat.NotebookNode) -> int:
    """Give every cell tagged ``solution`` myst-nb's ``hide-cell`` tag (collapsed, code and output); return how many."""
    hidden = 0
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if "solution" in tags:
            cell.metadata["tags"] = [*tags, "hide-cell"] if "hide-cell" not in tags else tags
            hidden += 1
    return hidden


def title_and_summary(nb: nbformat.NotebookNode) -> tuple[str, str]:
    """The first heading of the lesson and the first sentence after it, as plain text."""
    first = nb.cells[0].source.strip().splitlines()
    title = first[0].lstrip("# ").strip()
    body = " ".join(line.strip() for line in first[1:] if line.strip())
    body = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", body)   # [text](link) -> text
    body = body.replace("**", "").replace("`", "").replace("*", "")
    return title, body.split(". ")[0].rstrip(".") + "."


def lesson_number(path: Path) -> int:
    return int(path.name[:2])


def execute(nb: nbformat.NotebookNode, path: Path, timeout: int) -> None:
    """Run the notebook top to bottom with its folder as the working directory, as JupyterLab would."""
    ExecutePreprocessor(timeout=timeout, kernel_name="python3").preprocess(
        nb, {"metadata": {"path": str(path.parent)}})


def toctree(entries: list[str], caption: str | None = None) -> str:
    """A hidden MyST toctree: what the sidebar lists (the pages themselves show their own link lists)."""
    options = ":hidden:\n" + (f":caption: {caption}\n" if caption else "") + ":maxdepth: 1\n"
    return "```{toctree}\n" + options + "\n" + "\n".join(entries) + "\n```\n"


def landing_page(template: str, lessons: list[tuple[Path, str, str]]) -> str:
    """``docs/index.md`` with the lesson list (one line per lesson) and the sidebar's toctrees filled in."""
    if LESSONS_MARKER not in template:
        raise ValueError(f"docs/index.md has no {LESSONS_MARKER} line to put the lesson list at")
    blocks = []
    for part, title in enumerate(PART_TITLES):
        members = [(p, t, s) for p, t, s in lessons if (lesson_number(p) >= PART_TWO_FROM) == bool(part)]
        if not members:
            continue
        listing = "\n".join(f"- [{t}](lessons/{p.stem}.ipynb): {s}" for p, t, s in members)
        blocks.append(f"### {title}\n\n{listing}\n\n" + toctree([f"lessons/{p.stem}" for p, _, _ in members], title))
    blocks.append(toctree(["api"], "Reference"))
    return template.replace(LESSONS_MARKER, "\n".join(blocks))


def module_names() -> list[tuple[str, Path]]:
    """Every public module of the package, by its canonical (folder) name, with its source file: the package,
    then each floor's package and its modules (``vitlab.layers``, ``vitlab.layers.patches``, ...)."""
    package = ROOT / "src" / "vitlab"
    found = []
    for source in sorted(package.rglob("*.py")):
        parts = source.relative_to(package.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        elif parts[-1].startswith("_"):
            continue
        found.append((".".join(parts), source))
    return sorted(found, key=lambda item: item[0])


def api_pages(stage: Path) -> list[str]:
    """One page per public ``vitlab`` module (autodoc) and an index page ``api.md``, by floor; return the
    module names."""
    modules = []
    for name, source in module_names():
        docstring = ast.get_docstring(ast.parse(source.read_text())) or ""
        modules.append((name, docstring.strip().split("\n\n")[0].replace("\n", " "), source.name == "__init__.py"))
    (stage / "api").mkdir(parents=True, exist_ok=True)
    for name, _, is_package in modules:
        # A package page only re-exports what its module pages document: not indexed a second time.
        no_index = "   :no-index:\n" if is_package else ""
        page = f"# `{name}`\n\n```{{eval-rst}}\n.. automodule:: {name}\n{no_index}```\n"
        (stage / "api" / f"{name}.md").write_text(page)
    listing = "\n".join(f"{'  ' * (name.count('.') > 1)}- [`{name}`](api/{name}.md): {summary}"
                        for name, summary, _ in modules)
    (stage / "api.md").write_text(
        "# API reference\n\nOne module per concept, in folders that are the package's floors (a module imports "
        "only from its own folder and the floors below; `vitlab`'s page lists them). Each page is generated from "
        "the module's docstrings.\n\n"
        f"{listing}\n\n" + toctree([f"api/{name}" for name, _, _ in modules]))
    return [name for name, _, _ in modules]


def selected(path: Path, execute_spec: list[str]) -> bool:
    """Whether ``--execute`` asks for this lesson: 'all', 'none', or lesson numbers such as 00 07."""
    if execute_spec == ["all"]:
        return True
    if execute_spec == ["none"]:
        return False
    return path.name[:2] in {spec.zfill(2) for spec in execute_spec}


def build(out: Path, stage: Path, notebooks: list[Path], execute_spec: list[str], timeout: int) -> None:
    if stage.exists():
        shutil.rmtree(stage)
    (stage / "lessons").mkdir(parents=True)
    lessons = []
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        started = time.perf_counter()
        ran = selected(path, execute_spec)
        if ran:
            execute(nb, path, timeout)
        replace_widgets(nb)
        hidden = hide_solutions(nb)
        nbformat.write(nb, stage / "lessons" / path.name)
        title, summary = title_and_summary(nb)
        lessons.append((path, title, summary))
        print(f"{'executed' if ran else 'staged'} {path.name} ({time.perf_counter() - started:.0f} s, "
              f"{hidden} solution cells collapsed)", flush=True)
    shutil.copy(ROOT / "docs" / "conf.py", stage / "conf.py")
    shutil.copytree(ROOT / "docs" / "_static", stage / "_static")
    (stage / "index.md").write_text(landing_page((ROOT / "docs" / "index.md").read_text(), lessons))
    modules = api_pages(stage)
    print(f"API reference: {len(modules)} modules", flush=True)

    from sphinx.cmd.build import build_main

    started = time.perf_counter()
    status = build_main(["-b", "html", "-q", "-d", str(stage.parent / "site-doctrees"), str(stage), str(out)])
    if status != 0:
        raise SystemExit(f"sphinx-build failed (exit {status}); see the messages above")
    print(f"rendered {len(notebooks)} lessons in {time.perf_counter() - started:.0f} s: {out / 'index.html'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "site", help="where the HTML goes (default: site/)")
    parser.add_argument("--stage", type=Path, default=ROOT / "build" / "site-src",
                        help="where the Sphinx sources are assembled (default: build/site-src)")
    parser.add_argument("--execute", nargs="+", default=["all"], metavar="WHICH",
                        help="'all' (default), 'none' (render the committed notebooks, outputs stripped), "
                             "or lesson numbers, e.g. --execute 00 01")
    parser.add_argument("--timeout", type=int, default=7200, help="seconds per cell")
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every numbered lesson")
    args = parser.parse_args(argv)
    for spec in args.execute:
        if spec not in ("all", "none") and not (spec.isdigit() and len(spec) <= 2):
            parser.error(f"--execute takes 'all', 'none' or lesson numbers such as 07, got {spec!r}")
    notebooks = args.notebooks or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    for path in notebooks:
        if not path.is_file():
            parser.error(f"no such notebook: {path}")
    mode = "quick" if quick_mode() else "full"
    print(f"building the site in {mode} mode from {len(notebooks)} lessons", flush=True)
    build(args.out.resolve(), args.stage.resolve(), [p.resolve() for p in notebooks], args.execute, args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
