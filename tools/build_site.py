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
   ``docs/index.md`` with the lesson list filled in, the guide pages of :data:`GUIDES` from ``docs/*.md``,
   one API page per module, ``docs/conf.py``) are rendered by Sphinx into ``--out``. Three guide pages are
   completed from their sources of truth on the way: *Results* is ``reports/REPORT.md`` with its figures,
   *Command line* gets each sub-command's ``--help`` from ``vitlab.cli``'s parser, and *Reproducing the
   results* gets every experiment target of the ``Makefile`` with the time its comment states.

Equations are typeset by a copy of MathJax served with the site (``sphinx-mathjax-offline``, in the ``docs``
extra), so the pages need no network.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
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
#: The pages beside the lessons, by sidebar caption: ``docs/NAME.md`` (``results`` is made from reports/REPORT.md,
#: ``api`` from the package's docstrings).
GUIDES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Using the course", ("instructors", "cli", "datasets")),
    ("Results", ("results", "findings", "reproducing", "precision", "bench", "limits")),
    ("Reference", ("notation", "package", "api", "developing")),
)
HELP_MARKER = re.compile(r"^<!-- help: ([\w-]+) -->$", re.M)   # docs/cli.md: where a sub-command's --help goes
TARGETS_MARKER = "<!-- make-targets -->"                       # docs/reproducing.md: where the targets go


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


def link_guides(nb: nbformat.NotebookNode) -> None:
    """A lesson's links to a guide page, ``../docs/NAME.md`` from ``notebooks/`` (right in JupyterLab and on
    GitHub), pointed at the site's ``../NAME.md`` (the lessons are staged in ``lessons/``, the guides at the top)."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = re.sub(r"\]\(\.\./docs/([\w-]+\.md)", r"](../\1", cell.source)


_NAVIGATION = re.compile(r"^[*_]*(Previous|Next)\s*:", re.I)   # "*Previous: [Lesson 11 ...](...).*"
_SENTENCE_END = re.compile(r"(?<=[.?!])\s+(?=[A-Z])")
_ABBREVIATIONS = ("al.", "e.g.", "i.e.", "cf.", "vs.", "Fig.", "Eq.")


def _plain(text: str) -> str:
    """Markdown reduced to the words: links keep their text, emphasis and code marks go."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)   # [text](link) -> text
    return " ".join(text.replace("**", "").replace("`", "").replace("*", "").split())


def title_and_summary(nb: nbformat.NotebookNode) -> tuple[str, str]:
    """The first heading of the lesson and the first sentence of its introduction, as plain text.

    The introduction is the first paragraph of prose under the heading: a navigation line ("*Previous: Lesson
    11 ...*", Part II's lessons open with one), a list, a table or a code block is not a summary.
    """
    first = nb.cells[0].source.strip()
    heading, _, body = first.partition("\n")
    title = heading.lstrip("# ").strip()
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", body) if p.strip()]
    prose = next((p for p in paragraphs if not _NAVIGATION.match(p) and not p.startswith(("```", "|", "-", "* ", "1.",
                                                                                       "#", "<"))), "")
    text = _plain(prose)
    ends = [m.start() for m in _SENTENCE_END.finditer(text) if not text[:m.start()].endswith(_ABBREVIATIONS)]
    sentence = text[:ends[0]] if ends else text
    return title, sentence.rstrip(".:;,") + ("" if sentence.endswith(("?", "!")) else ".")


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
    """``docs/index.md`` with the lesson list (one line per lesson) and the sidebar's toctrees filled in: the
    lessons by part, then the guide pages of :data:`GUIDES` under their captions."""
    if LESSONS_MARKER not in template:
        raise ValueError(f"docs/index.md has no {LESSONS_MARKER} line to put the lesson list at")
    blocks = []
    for part, title in enumerate(PART_TITLES):
        members = [(p, t, s) for p, t, s in lessons if (lesson_number(p) >= PART_TWO_FROM) == bool(part)]
        if not members:
            continue
        listing = "\n".join(f"- [{t}](lessons/{p.stem}.ipynb): {s}" for p, t, s in members)
        blocks.append(f"### {title}\n\n{listing}\n\n" + toctree([f"lessons/{p.stem}" for p, _, _ in members], title))
    blocks += [toctree(list(pages), caption) for caption, pages in GUIDES]
    return template.replace(LESSONS_MARKER, "\n".join(blocks))


# ---- the guide pages ----------------------------------------------------------------------------

_RULE = re.compile(r"^([A-Za-z][\w.-]*)\s*:(?!=)")
_COURSE_LINE = re.compile(r"^#\s+make ([\w-]+)\s")
_TIME = re.compile(r"(?:about|within|under)\s+[\d.,]+\s*(?:s|seconds?|min|minutes?|hours?)\b"
                   r"(?:\s+on\s+(?:a|an|one)\s+[\w -]*?(?:CPU|GPU))?|a few (?:seconds|minutes)", re.I)


@dataclass
class MakeTarget:
    """A target of the Makefile, with the comment block written above it (shared by the targets under it)."""

    name: str
    comment: str
    first: str   #: the first target under the same comment (the one the comment's time is for)

    @property
    def time(self) -> str:
        """The run time the comment states for this target ("about 47 minutes on a 2-core CPU"), or ""."""
        text = self.comment
        own = re.search(rf"(?:^|[\s(]){re.escape(self.name)}:", text)
        if own:   # a comment that describes several targets one by one ("cifar-search: ...; crossover: ...")
            text = text[own.end():]
            text = re.split(r";\s+[a-z][\w-]*:\s", text, maxsplit=1)[0]   # up to the next target's part
        elif self.name != self.first:
            found = _TIME.search(text)
            return f"part of make {self.first} ({found.group(0)})" if found else ""
        found = _TIME.search(text)
        if not found:
            return ""
        time = found.group(0)
        if "GPU" in text[max(0, found.start() - 100):found.start()] and "CPU" not in time and "GPU" not in time:
            time += " (on a GPU)"
        return time


def makefile_targets(text: str) -> list[MakeTarget]:
    """Every rule of the Makefile (not ``.PHONY``, not file targets such as ``$(STAMP)``), in order."""
    targets, comment, first, previous_was_comment = [], "", "", False
    for line in text.splitlines():
        if line.startswith("#"):
            words = line.lstrip("#").strip()
            comment = f"{comment} {words}".strip() if previous_was_comment else words
            first = "" if not previous_was_comment else first
            previous_was_comment = True
            continue
        previous_was_comment = False
        match = _RULE.match(line)
        if match and match.group(1) != ".PHONY":
            first = first or match.group(1)
            targets.append(MakeTarget(match.group(1), comment, first))
    return targets


def course_targets(text: str) -> list[str]:
    """The targets the Makefile's opening comment lists (``#   make test    ...``): the course's own commands."""
    names = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        match = _COURSE_LINE.match(line)
        if match:
            names.append(match.group(1))
    return names


def experiment_targets(text: str) -> list[MakeTarget]:
    """The Makefile's targets that run or rebuild experiments: all but the course's own commands."""
    course = set(course_targets(text))
    return [target for target in makefile_targets(text) if target.name not in course]


def _markdown_text(text: str) -> str:
    """A Makefile comment as MyST text: flags (``--resume``) and make variables (``$(RUN)``) as code, so that
    no ``--`` becomes a dash and no ``$`` starts math; ``$``, ``*``, ``<``, ``|`` and ``\\`` escaped elsewhere."""
    parts = re.split(r"(`[^`]*`|(?<![\w-])--[\w-]+(?:=\S+)?|\$\([A-Z_]+\))", text)
    return "".join(part if part.startswith("`") else f"`{part}`" if part.startswith(("--", "$(")) else
                   re.sub(r"([$*<|\\])", r"\\\1", part) for part in parts)


def reproducing_page(template: str, makefile: str) -> str:
    """``docs/reproducing.md`` with every experiment target of the Makefile: a table of times, then each
    comment block once, under the targets it describes."""
    if TARGETS_MARKER not in template:
        raise ValueError(f"docs/reproducing.md has no {TARGETS_MARKER} line to put the targets at")
    targets = experiment_targets(makefile)
    rows = [f"| `make {t.name}` | {_markdown_text(t.time) or 'not stated in the Makefile'} |" for t in targets]
    table = "| target | time (as its Makefile comment states it) |\n|---|---|\n" + "\n".join(rows)
    sections = []
    for first in dict.fromkeys(t.first for t in targets):
        group = [t for t in targets if t.first == first]
        names = ", ".join(f"`make {t.name}`" for t in group)
        sections.append(f"### {names}\n\n{_markdown_text(group[0].comment) or 'No comment in the Makefile.'}\n")
    return template.replace(TARGETS_MARKER, table + "\n\n" + "\n".join(sections))


def cli_help() -> dict[str, str]:
    """Each ``vitlab`` sub-command's ``--help`` text, from the command line's own parser (100 columns wide)."""
    from vitlab.cli import build_parser

    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        parser = build_parser()
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        return {name: sub.format_help() for name, sub in commands.choices.items()}
    finally:
        if saved is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = saved


def cli_page(template: str, helps: dict[str, str]) -> str:
    """``docs/cli.md`` with each ``<!-- help: NAME -->`` line replaced by that sub-command's ``--help``.

    A sub-command without its line still gets a section (its help) at the end, and a line naming a sub-command
    the parser lacks says so, so that the build goes through; ``tests/test_site.py`` fails on either, so that
    the page is put right by hand (examples included).
    """
    def options(name: str) -> str:
        if name not in helps:
            return f"*`vitlab {name}` is not a sub-command of this version's command line.*"
        return f"All of `vitlab {name}`'s options (its `--help`):\n\n```text\n{helps[name]}```"

    page = HELP_MARKER.sub(lambda match: options(match.group(1)), template)
    documented = set(HELP_MARKER.findall(template))
    return page + "".join(f"\n## vitlab {name}\n\n{options(name)}\n" for name in helps if name not in documented)


def results_page(report: str) -> str:
    """``reports/REPORT.md`` as the site's Results page: its title replaced, its figures' paths kept
    (``figures/*.png``, copied next to the page)."""
    body = report.split("\n", 1)[1] if report.startswith("# ") else report
    return ("# Results\n\nThe results report of every recorded run, as `vitlab report` writes it to "
            "`reports/REPORT.md` (`make report` rebuilds it). What the numbers show, experiment by experiment, is in "
            "[What the results show](findings.md); the commands that made them are in "
            "[Reproducing the results](reproducing.md).\n" + body)


def stage_guides(stage: Path) -> list[str]:
    """Write the guide pages of :data:`GUIDES` into the stage (and the report's figures); return their names."""
    docs = ROOT / "docs"
    pages = [name for _, names in GUIDES for name in names if name != "api"]
    for name in pages:
        if name == "results":
            (stage / "results.md").write_text(results_page((ROOT / "reports" / "REPORT.md").read_text()))
            shutil.copytree(ROOT / "reports" / "figures", stage / "figures")
            continue
        source = docs / f"{name}.md"
        if not source.is_file():
            raise SystemExit(f"the sidebar lists {name}, but docs/{name}.md does not exist")
        text = source.read_text()
        if name == "cli":
            text = cli_page(text, cli_help())
        elif name == "reproducing":
            text = reproducing_page(text, (ROOT / "Makefile").read_text())
        (stage / f"{name}.md").write_text(text)
    return pages


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
        link_guides(nb)
        nbformat.write(nb, stage / "lessons" / path.name)
        title, summary = title_and_summary(nb)
        lessons.append((path, title, summary))
        print(f"{'executed' if ran else 'staged'} {path.name} ({time.perf_counter() - started:.0f} s, "
              f"{hidden} solution cells collapsed)", flush=True)
    shutil.copy(ROOT / "docs" / "conf.py", stage / "conf.py")
    shutil.copytree(ROOT / "docs" / "_static", stage / "_static")
    (stage / "index.md").write_text(landing_page((ROOT / "docs" / "index.md").read_text(), lessons))
    guides = stage_guides(stage)
    modules = api_pages(stage)
    print(f"guide pages: {', '.join(guides)}; API reference: {len(modules)} modules", flush=True)

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
