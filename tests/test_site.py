"""The course website (``make html``): built in quick mode and loaded in a real headless browser.

The build executes lesson 01 (figures, a widget, exercise solutions) and stages the other lessons
as committed, which keeps the test to about a minute; ``make html`` executes them all. Chromium
renders each page (scripts run) and dumps its DOM, which the assertions read. Screenshots go to
``$VITLAB_SITE_SHOTS`` when set, for a person to look at.
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
    assert page.count("```{toctree}") == 3   # Part I, Part II, the API reference
    with pytest.raises(ValueError, match="lessons"):
        build_site.landing_page("# no marker\n", lessons)


def test_summary_drops_markdown_links():
    nb = build_site.nbformat.v4.new_notebook()
    nb.cells = [build_site.nbformat.v4.new_markdown_cell("# Lesson 99 · X\n\nAfter [lesson 11](11_x.ipynb) we "
                                                          "**go on**. More.")]
    assert build_site.title_and_summary(nb) == ("Lesson 99 · X", "After lesson 11 we go on.")


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
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "VITLAB_QUICK": "1"}
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "build_site.py"), "--execute", EXECUTED[:2],
                             "--out", str(out / "html"), "--stage", str(out / "src")],
                            capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return out / "html"


def browse(page: Path, screenshot: str | None = None) -> str:
    """The page's DOM after Chromium loaded it and ran its scripts."""
    browser = find_browser()
    assert browser is not None
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1600"]
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


def test_sidebar_has_the_lessons_in_order_and_parts_as_captions(site: Path):
    nav = sidebar(browse(site / "api.html"))   # a page that is not a lesson: every lesson is a link
    assert lesson_links(nav) == [p.stem for p in LESSONS]
    assert nav.index(build_site.PART_TITLES[0]) < nav.index(LESSONS[0].stem)
    if any(build_site.lesson_number(p) >= build_site.PART_TWO_FROM for p in LESSONS):
        assert nav.index(LESSONS[11].stem) < nav.index(build_site.PART_TITLES[1]) < nav.index(LESSONS[12].stem)


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
