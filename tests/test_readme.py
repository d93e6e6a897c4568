"""The README stays a page a newcomer reads in five minutes, in step with the Makefile and the lessons.

It holds what vitlab is, the two commands (and the course's other ``make`` commands), the lesson list, a
short results table, the repository's layout and how to contribute; everything else is a page of the
website (``docs/``), and the sections that used to be in the README are checked to be there.
"""

from __future__ import annotations

import re
from pathlib import Path

from tools import build_site

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
MAKEFILE = (ROOT / "Makefile").read_text()
LESSONS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
MAX_LINES = 250


def test_readme_is_at_most_250_lines():
    assert len(README.splitlines()) <= MAX_LINES, "move the details to a page in docs/"


def test_every_make_target_the_readme_names_is_in_the_makefile():
    targets = {target.name for target in build_site.makefile_targets(MAKEFILE)}
    named = set(re.findall(r"`make ([a-z][\w-]*)", README)) | set(re.findall(r"^make ([a-z][\w-]*)", README, re.M))
    assert {"train", "test", "html", "handouts"} <= named
    assert named <= targets, f"the README names targets the Makefile lacks: {sorted(named - targets)}"


def test_the_readme_lists_every_course_command_of_the_makefile():
    two_commands = README.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    assert re.search(r"^make train\b", two_commands, re.M) and re.search(r"^make test\b", two_commands, re.M)
    table = set(re.findall(r"^\| `make ([\w-]+)` \|", README, re.M))
    course = set(build_site.course_targets(MAKEFILE))   # the commands the Makefile's opening comment lists
    assert {"setup", "test", "html", "handouts", "clean"} <= course
    assert course - {"test"} <= table, f"course commands missing from the README's table: {sorted(course - table)}"
    assert table <= course, f"the README's table lists targets that are not course commands: {sorted(table - course)}"


def test_the_lesson_list_is_the_notebooks_in_order():
    listed = re.findall(r"^\| `(\d\d_[a-z0-9_]+)` \|", README, re.M)
    assert listed == [path.stem for path in LESSONS]


def test_every_relative_link_of_the_readme_exists():
    links = re.findall(r"\]\(([^)\s#]+)(?:#[^)]*)?\)", README)
    local = [link for link in links if not re.match(r"[a-z]+:", link)]
    missing = [link for link in local if not (ROOT / link).exists()]
    assert local and not missing, missing


def test_the_sections_moved_out_of_the_readme_are_pages_in_the_sidebar():
    moved = {   # page -> headings of the README sections it now holds
        "findings": ["# What the results show", "## `make train` on MNIST",
                     "## Transfer learning", "## Segmentation and detection on MNIST canvases"],
        "precision": ["# Precision and speed: bf16, AMX, compile"],
        "bench": ["# Throughput (`make bench`)"],
        "developing": ["## Tests", "## The course website"],
        "limits": ["# Known limits"],
        "datasets": ["# Datasets"],
        "cli": ["# Command line", "## Run folders", "## Bad input"],
        "package": ["# The package", "## Adding a model family"],
        "instructors": ["## What each lesson teaches"],
    }
    sidebar = {page for _, pages in build_site.GUIDES for page in pages}
    for page, headings in moved.items():
        assert page in sidebar, page
        text = (ROOT / "docs" / f"{page}.md").read_text()
        for heading in headings:
            assert re.search(rf"^{re.escape(heading)}", text, re.M), f"docs/{page}.md lacks {heading!r}"
