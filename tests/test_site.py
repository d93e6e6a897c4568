"""The course website (``make html``): built in quick mode and loaded in a real headless browser.

The build executes lesson 01 (figures, a widget, exercise solutions) and stages the other lessons
as committed, which keeps the test to a few minutes; ``make html`` executes them all. Chromium
renders each page (scripts run) and dumps its DOM, which the assertions read; one lesson is loaded with
the network cut off, to show that its equations are typeset by the MathJax served with the site.
Screenshots go to ``$VITLAB_SITE_SHOTS`` when set, for a person to look at. ``VITLAB_SITE=site`` runs the
browser tests on a site already built (``make html QUICK=1 EXECUTE="01"``) instead of building one.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tools import build_site

ROOT = Path(__file__).resolve().parents[1]

LESSONS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
EXECUTED = "01_patchify_and_linear_mapping"
EQUATIONS = "05_full_vit"   # the ViT paper's equations 1-4, inline and displayed
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def find_browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def solution_count(notebook: Path) -> int:
    cells = json.loads(notebook.read_text())["cells"]
    return sum("solution" in cell.get("metadata", {}).get("tags", []) for cell in cells)


# ---- the builder's pieces, no browser needed ----------------------------------------------------

def test_landing_page_lists_lessons_by_part_and_requires_the_marker():
    lessons = [(Path("00_a.ipynb"), "Lesson 00", "First."), (Path("12_b.ipynb"), "Lesson 12", "Later.")]
    page = build_site.landing_page("# Course\n\n<!-- lessons -->\n", lessons)
    part_one, part_two = page.index(build_site.PART_TITLES[0]), page.index(build_site.PART_TITLES[1])
    assert part_one < page.index("lessons/00_a.ipynb") < part_two < page.index("lessons/12_b.ipynb")
    assert page.count("```{toctree}") == 2 + len(build_site.GUIDES)   # Part I, Part II, the guide captions
    assert all(f":caption: {caption}" in page for caption, _ in build_site.GUIDES)
    with pytest.raises(ValueError, match="lessons"):
        build_site.landing_page("# no marker\n", lessons)


def test_lesson_links_to_guide_pages_point_at_the_site_pages():
    nb = build_site.nbformat.v4.new_notebook()
    nb.cells = [build_site.nbformat.v4.new_markdown_cell("See the [notation](../docs/notation.md#the-model)."),
                build_site.nbformat.v4.new_code_cell("# [not a link](../docs/notation.md)")]
    build_site.link_guides(nb)
    assert nb.cells[0].source == "See the [notation](../notation.md#the-model)."
    assert nb.cells[1].source == "# [not a link](../docs/notation.md)"


def test_summary_drops_markdown_links():
    nb = build_site.nbformat.v4.new_notebook()
    nb.cells = [build_site.nbformat.v4.new_markdown_cell("# Lesson 99 · X\n\nAfter [lesson 11](11_x.ipynb) we "
                                                          "**go on**. More.")]
    assert build_site.title_and_summary(nb) == ("Lesson 99 · X", "After lesson 11 we go on.")


def test_summary_skips_the_navigation_line_and_ends_at_the_first_sentence():
    nb = build_site.nbformat.v4.new_notebook()
    nb.cells = [build_site.nbformat.v4.new_markdown_cell(
        "# Lesson 98 · Y\n\n*Previous: [Lesson 97 · X](97_x.ipynb). Part II starts here.*\n\nAs Smith et al. (2020) "
        "showed, **tokens** matter: a lot. Second sentence.\n\n1. a list")]
    assert build_site.title_and_summary(nb) == ("Lesson 98 · Y", "As Smith et al. (2020) showed, tokens matter: a lot.")


def test_part_two_summaries_come_from_each_lesson_introduction():
    part_two = [p for p in LESSONS if build_site.lesson_number(p) >= build_site.PART_TWO_FROM]
    assert len(part_two) >= 5
    for path in part_two:
        nb = build_site.nbformat.read(path, as_version=4)
        intro = nb.cells[0].source
        assert re.search(r"^\*Previous:", intro, re.M), f"{path.name}: the test expects Part II's navigation line"
        _, summary = build_site.title_and_summary(nb)
        navigation = next(line for line in intro.splitlines() if line.startswith("*Previous:"))
        assert "Previous" not in summary and summary[:30] not in build_site._plain(navigation), (path.name, summary)
        words = summary.rstrip(".?!").split()[:6]   # the summary's opening words are in the introduction's prose
        assert " ".join(words) in " ".join(build_site._plain(intro).split()), (path.name, summary)
        assert 40 <= len(summary) <= 400, (path.name, summary)


MAKEFILE_SAMPLE = """# vitlab
#   make test    the tests
#   make html    the site

test:
\tpytest

# The comparison (about 50 minutes on a 2-core CPU): $(RUN) twice.
.PHONY: compare report
compare: $(STAMP)
\trun
report: $(STAMP)
\treport

# Studies: search: a search (about 4 hours); sweep: a sweep, about 10 hours.
search:
\tx
sweep:
\ty

# On a machine with an NVIDIA GPU, within 10 minutes.
gpu:
\tz
"""


def test_makefile_targets_and_the_times_their_comments_state():
    assert build_site.course_targets(MAKEFILE_SAMPLE) == ["test", "html"]
    found = {t.name: t.time for t in build_site.experiment_targets(MAKEFILE_SAMPLE)}
    assert found == {"compare": "about 50 minutes on a 2-core CPU", "report": "part of make compare (about 50 minutes "
                     "on a 2-core CPU)", "search": "about 4 hours", "sweep": "about 10 hours",
                     "gpu": "within 10 minutes (on a GPU)"}


def test_reproducing_page_lists_every_experiment_target_of_the_real_makefile():
    makefile = (ROOT / "Makefile").read_text()
    page = build_site.reproducing_page((ROOT / "docs" / "reproducing.md").read_text(), makefile)
    targets = build_site.experiment_targets(makefile)
    assert {"train", "baselines", "swin", "dense", "bench", "transfer"} <= {t.name for t in targets}
    for target in targets:
        assert f"| `make {target.name}` |" in page, target.name
    assert "| `make swin` | about 47 minutes on a 2-core CPU |" in page
    # Flags and make variables are code (no "--" turned into a dash, no "$" read as math), other "$" escaped.
    assert "`--resume`" in page and "`$(RUN)`" in page
    assert not re.search(r"(?<!\\)\$", re.sub(r"`[^`]*`", "", page)), "an unescaped $ outside code"
    for course in build_site.course_targets(makefile):
        assert f"| `make {course}` |" not in page, course
    with pytest.raises(ValueError, match="make-targets"):
        build_site.reproducing_page("# no marker\n", makefile)


def test_cli_page_documents_every_sub_command_with_an_example_and_its_help():
    template = (ROOT / "docs" / "cli.md").read_text()
    helps = build_site.cli_help()
    assert {"train", "pretrain", "evaluate", "explain", "report", "download"} <= set(helps)
    assert sorted(build_site.HELP_MARKER.findall(template)) == sorted(helps), "docs/cli.md: one help line per command"
    for name in helps:
        section = template.split(f"\n## vitlab {name}\n", 1)[1].split("\n## ", 1)[0]
        examples = re.findall(r"```bash\n(.*?)```", section, re.S)
        assert any(re.search(rf"^vitlab {name}\b", block, re.M) for block in examples), f"no example of vitlab {name}"
    page = build_site.cli_page(template, helps)
    assert "<!-- help:" not in page and helps["train"] in page
    # A sub-command the page forgot still gets its help; a page line for a command that is gone says so.
    extra = build_site.cli_page("# CLI\n\n<!-- help: gone -->\n", {"new": "usage: vitlab new\n"})
    assert "## vitlab new" in extra and "usage: vitlab new" in extra and "`vitlab gone` is not a sub-command" in extra


def test_results_page_is_the_report_with_its_figures():
    report = (ROOT / "reports" / "REPORT.md").read_text()
    page = build_site.results_page(report)
    assert page.startswith("# Results\n") and report.split("\n", 1)[1] in page
    figures = re.findall(r"!\[[^\]]*\]\((figures/[^)]+)\)", page)
    assert len(figures) >= 10 and all((ROOT / "reports" / f).is_file() for f in figures)


def test_every_guide_page_has_a_source():
    for _, pages in build_site.GUIDES:
        for page in pages:
            assert page in ("results", "api") or (ROOT / "docs" / f"{page}.md").is_file(), page


def test_solutions_get_the_hide_tag_once_and_nothing_else_does():
    nb = build_site.nbformat.v4.new_notebook()
    nb.cells = [build_site.nbformat.v4.new_code_cell("1", metadata={"tags": ["solution"]}),
                build_site.nbformat.v4.new_code_cell("2", metadata={"tags": ["nbval-check-output"]})]
    assert build_site.hide_solutions(nb) == 1
    assert build_site.hide_solutions(nb) == 1
    assert nb.cells[0].metadata["tags"] == ["solution", "hide-cell"]
    assert nb.cells[1].metadata["tags"] == ["nbval-check-output"]


def test_execute_flag_rejects_nonsense(capsys):
    with pytest.raises(SystemExit):
        build_site.main(["--execute", "lesson7"])
    assert "--execute takes 'all', 'none' or lesson numbers" in capsys.readouterr().err


# ---- the built site in a browser ----------------------------------------------------------------

@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if find_browser() is None:
        pytest.skip("no headless browser: install Chromium (Debian/Ubuntu: `apt-get install chromium`) "
                    "to run the website test")
    if os.environ.get("VITLAB_SITE"):   # a site already built by make html QUICK=1 EXECUTE="01"
        return Path(os.environ["VITLAB_SITE"]).resolve()
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "VITLAB_QUICK": "1"}
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "build_site.py"), "--execute", EXECUTED[:2],
                             "--out", str(out / "html"), "--stage", str(out / "src")],
                            capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return out / "html"


#: Chromium with no network: every request goes to a proxy that is not there, and no host name resolves.
OFFLINE = ["--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>", "--host-resolver-rules=MAP * ~NOTFOUND"]


def browse(page: Path, screenshot: str | None = None, offline: bool = False, wait_ms: int = 0) -> str:
    """The page's DOM after Chromium loaded it and ran its scripts (for ``wait_ms`` of the page's time more:
    MathJax typesets after the page has loaded); ``offline``: with the network cut off."""
    browser = find_browser()
    assert browser is not None
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1600"]
    flags += (OFFLINE if offline else []) + ([f"--virtual-time-budget={wait_ms}"] if wait_ms else [])
    result = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "</html>" in result.stdout, result.stderr[-2000:]
    shots = os.environ.get("VITLAB_SITE_SHOTS")
    if shots and screenshot:
        Path(shots).mkdir(parents=True, exist_ok=True)
        subprocess.run([*flags, f"--screenshot={Path(shots) / screenshot}", page.as_uri()],
                       capture_output=True, timeout=120, check=True)
    return result.stdout


def text(dom: str) -> str:
    """What a reader sees: tags removed, entities decoded, whitespace collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", dom)).split())


def sidebar(dom: str) -> str:
    match = re.search(r'<nav class="[^"]*\bbd-docs-nav\b[^"]*".*?</nav>', dom, re.S)
    assert match, "no sidebar navigation on the page"
    return match.group(0)


def lesson_links(html: str) -> list[str]:
    found = re.findall(r'href="(?:\.\./)?(?:lessons/)?(\d\d_[a-z0-9_]+)\.html', html)
    return list(dict.fromkeys(found))   # in order of first appearance


def test_landing_page_links_every_lesson(site: Path):
    dom = browse(site / "index.html", "index.png")
    assert lesson_links(dom) == [p.stem for p in LESSONS]
    assert "make train" in text(dom) and "make test" in text(dom)   # how to run it
    assert 'href="api.html"' in dom
    assert (site / "search.html").is_file() and (site / "searchindex.js").stat().st_size > 10_000
    part_two = text(dom).split(build_site.PART_TITLES[1], 1)[1]
    assert "Previous:" not in part_two   # the summaries come from the introductions, not the navigation line
    for path in LESSONS[build_site.PART_TWO_FROM:]:
        summary = build_site.title_and_summary(build_site.nbformat.read(path, as_version=4))[1]
        assert " ".join(summary.split()[:5]) in part_two, path.name


def test_sidebar_has_the_lessons_in_order_and_parts_as_captions(site: Path):
    nav = sidebar(browse(site / "api.html"))   # a page that is not a lesson: every lesson is a link
    assert lesson_links(nav) == [p.stem for p in LESSONS]
    assert nav.index(build_site.PART_TITLES[0]) < nav.index(LESSONS[0].stem)
    if any(build_site.lesson_number(p) >= build_site.PART_TWO_FROM for p in LESSONS):
        assert nav.index(LESSONS[11].stem) < nav.index(build_site.PART_TITLES[1]) < nav.index(LESSONS[12].stem)
    for caption, pages in build_site.GUIDES:   # the pages beside the lessons, under their captions, after them
        assert nav.index(LESSONS[-1].stem) < nav.index(caption)
        for page in pages:
            link = r'class="current reference internal" href="#"' if page == "api" else rf'href="{page}\.html"'
            assert re.search(link, nav), f"{page} is not in the sidebar"   # (api is the page on show)
            assert (site / f"{page}.html").is_file(), page


def test_solutions_are_collapsed_and_pages_link_to_neighbours(site: Path):
    for number, notebook in enumerate(LESSONS):
        dom = browse(site / "lessons" / f"{notebook.stem}.html",
                     "lesson-executed.png" if notebook.stem == EXECUTED else None)
        hidden = re.findall(r'<details class="[^"]*\bhide\b[^"]*"[^>]*>', dom)
        assert len(hidden) == solution_count(notebook) >= 2, notebook.name
        assert not any(re.search(r"\bopen\b", tag) for tag in hidden), f"{notebook.name}: a solution is expanded"
        following = re.search(r'<a class="right-next" href="([^"]+)"', dom)
        preceding = re.search(r'<a class="left-prev" href="([^"]+)"', dom)
        assert preceding and preceding.group(1).endswith(
            f"{LESSONS[number - 1].stem}.html" if number else "index.html"), notebook.name
        if number + 1 < len(LESSONS):
            assert following and following.group(1) == f"{LESSONS[number + 1].stem}.html", notebook.name


def test_executed_lesson_shows_figures_and_the_widget_fallback_without_progress_bars(site: Path):
    dom = browse(site / "lessons" / f"{EXECUTED}.html")
    assert dom.count("<img") >= 3           # the lesson's figures
    assert "interactive widget: open this notebook in JupyterLab" in dom
    assert "%|" not in dom                  # tqdm bars are dropped
    assert "application/vnd.jupyter.widget" not in dom


def test_api_reference_documents_every_module(site: Path):
    modules = [name for name, _ in build_site.module_names()]
    assert {"vitlab.layers.patches", "vitlab.models.swin", "vitlab.engine.driver", "vitlab.runfolder.schema"} <= set(
        modules)
    dom = browse(site / "api" / "vitlab.models.swin.html", "api-swin.png")
    assert 'id="vitlab.models.swin.window_partition"' in dom and 'id="vitlab.models.swin.Swin"' in dom
    assert "(N, C, H, W)" in text(dom)   # shapes from the docstrings
    for module in modules:
        assert (site / "api" / f"{module}.html").is_file(), module


def test_guide_pages_show_the_report_figures_commands_targets_and_lesson_table(site: Path):
    results = browse(site / "results.html", "results.png")
    figures = re.findall(r"!\[[^\]]*\]\((figures/[^)]+)\)", (ROOT / "reports" / "REPORT.md").read_text())
    images = re.findall(r'<img[^>]+src="([^"]+)"', results)
    assert len(images) >= len(figures) >= 10
    assert all((site / src).is_file() for src in images), "a figure of the Results page is missing from the site"
    cli = text(browse(site / "cli.html"))
    for name in build_site.cli_help():
        assert f"vitlab {name}" in cli and f"usage: vitlab {name}" in cli, name
    reproducing = text(browse(site / "reproducing.html"))
    for target in build_site.experiment_targets((ROOT / "Makefile").read_text()):
        assert f"make {target.name}" in reproducing, target.name
    instructors = text(browse(site / "instructors.html"))
    assert "lesson quick mode full mode (CPU) extras data" in instructors and "make handouts" in instructors
    assert all(f"{build_site.lesson_number(p):02d} ·" in instructors for p in LESSONS)


def test_equations_are_typeset_by_the_bundled_mathjax_with_the_network_cut_off(site: Path):
    page = site / "lessons" / f"{EQUATIONS}.html"
    source = page.read_text()
    assert not re.search(r'<script[^>]+src="(?:https?:)?//', source), "a script is loaded from another host"
    assert re.search(r'<script[^>]+src="[./]*_static/mathjax/tex-chtml\.js', source), "MathJax is not the site's own"
    assert (site / "_static" / "mathjax" / "tex-chtml.js").is_file()
    equations = len(re.findall(r'class="math notranslate nohighlight"', source))
    assert equations >= 10, "the lesson should hold the ViT paper's equations"
    dom = browse(page, "equations-offline.png", offline=True, wait_ms=20_000)
    typeset = re.findall(r'<(?:span|div) class="math notranslate nohighlight">\s*<mjx-container', dom)
    assert len(typeset) == equations, f"{len(typeset)} of {equations} equations typeset offline"
    assert not re.search(r"\\\(|\\\[", text(dom).replace("\\[source]", "")), "raw TeX left on the page"

