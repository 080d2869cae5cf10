"""The front door stays a front door: docs/configuration.md is generated and current, every config
field is documented, the README is short and carries no commit hashes or work-log lines, and every
link of README.md and docs/ lands on a file and a heading that exist."""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from pathlib import Path

import pytest

from orchestration import docgen

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
HASH = re.compile(r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b")  # a hex run with digits and letters
WORK_LOG = ("seed change", "of mine", "in the same session", "another job", "nothing else running at the time")


def test_configuration_page_is_current():
    assert docgen.PAGE.read_text() == docgen.render(), (
        f"docs/configuration.md is out of date; regenerate it with `{docgen.COMMAND}` (or `make docs`)")


def test_every_config_field_has_a_docstring():
    seen: dict[type, list[str]] = {}
    for name, cls in docgen.commands():
        seen.setdefault(cls, [])
        docgen.walk(cls, "", name, seen)
    missing = []
    for cls in seen:
        docs, hints = docgen.field_docs(cls), typing.get_type_hints(cls)
        missing += [f"{cls.__name__}.{f.name}" for f in dataclasses.fields(cls)
                    if f.name not in docs and docgen.nested(hints[f.name])[0] is None]
    assert not missing, f"fields without a docstring under them: {missing}"


def test_readme_is_a_front_door():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    for heading in ("## Two commands", "## Bring your own model and data", "## Commands at a glance", "## Layout",
                    "## Results so far", "## Read more"):
        assert heading in text, heading
    assert len(list((ROOT / "docs").glob("*.md"))) >= 5


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_no_commit_hashes_or_work_log(page):
    text = page.read_text()
    assert not HASH.findall(text), f"{page.name}: commit-hash-like strings {HASH.findall(text)[:5]}; provenance goes to results/*.json"
    found = [w for w in WORK_LOG if w in text.lower()]
    assert not found, f"{page.name}: work-log wording {found}"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {slug(m) for m in re.findall(r"^#+ (.+)$", text, re.M)}


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_links_land(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.name}: link to {target}: no such file"
        if anchor and dest.suffix == ".md":
            assert anchor in anchors(dest), f"{page.name}: link to {target}: no such heading in {dest.name}"


def test_every_results_file_is_linked_and_names_its_page():
    results = (ROOT / "docs" / "results.md").read_text()
    files = sorted((ROOT / "results").glob("*.json"))
    assert files
    for f in files:
        data = json.loads(f.read_text())
        assert f"../results/{f.name}" in results, f"docs/results.md does not link {f.name}"
        page, _, anchor = data["page"].partition("#")
        assert anchor in anchors(ROOT / page), f"{f.name}: page {data['page']} has no such heading"
        assert data["machine"]["kind"] in results and data["command"]
