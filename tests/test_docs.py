"""The documentation's links resolve: every relative link in README.md and docs/**/*.md names a file that
exists and, with a #fragment, a heading of that page (GitHub's anchors); every code path named in
backticks exists; and the README stays a front door (at most 120 lines)."""

from __future__ import annotations

import pathlib
import re

import pytest

from tests.conftest import REPO_ROOT

PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").rglob("*.md"))]


def _without_code_blocks(text: str) -> str:
  return re.sub(r"```.*?```", "", text, flags=re.DOTALL)


def anchors(page: pathlib.Path) -> set[str]:
  """GitHub's heading anchors of a page: lower case, punctuation dropped, spaces to hyphens, repeats
  numbered."""
  found, seen = set(), {}
  for line in _without_code_blocks(page.read_text()).splitlines():
    heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
    if heading:
      slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
      count = seen.get(slug, 0)
      seen[slug] = count + 1
      found.add(slug if count == 0 else f"{slug}-{count}")
  return found


def links(page: pathlib.Path) -> list[str]:
  text = re.sub(r"`[^`]*`", "", _without_code_blocks(page.read_text()))
  targets = re.findall(r"\]\(([^)\s]+)\)", text) + re.findall(r'<img[^>]*src="([^"]+)"', text)
  return [t for t in targets if not re.match(r"^[a-z]+:", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_relative_link_resolves(page):
  broken = []
  for target in links(page):
    path, _, fragment = target.partition("#")
    destination = (page.parent / path).resolve() if path else page
    if not destination.exists():
      broken.append(f"{target}: no such file")
    elif fragment and destination.suffix == ".md" and fragment not in anchors(destination):
      broken.append(f"{target}: no such heading")
  assert not broken, broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_code_path_named_exists(page):
  named = re.findall(r"`((?:alexnet_jax|configs|tests|experiments|requirements)/[\w./-]*)`", page.read_text())
  assert not [p for p in named if not (REPO_ROOT / p.rstrip("/")).exists()]


def test_the_checker_finds_a_broken_link(tmp_path):
  page = tmp_path / "page.md"
  page.write_text("# A title\n\n[ok](#a-title) [gone](#no-such) [file](missing.md)\n")
  assert anchors(page) == {"a-title"} and links(page) == ["#a-title", "#no-such", "missing.md"]


def test_the_readme_is_a_front_door():
  assert len((REPO_ROOT / "README.md").read_text().splitlines()) <= 120
