"""Every ```python block of README.md and docs/*.md runs, as a newcomer would paste it, against
the mock API; the README stays short enough to read in five minutes; relative links resolve.

Each block runs in a fresh interpreter in an empty directory with ``INTERAKT_HOST`` pointing at
a MockInteraktServer and ``INTERAKT_API_KEY=test``; it must exit 0 and the server must have
received something. Markers, an HTML comment on the line right before the block:
``<!-- not-run: reason -->`` for a block that cannot run alone (a settings fragment), and
``<!-- no-requests: reason -->`` for one that runs but sends nothing to INTERAKT_HOST (it
captures, or runs its own server). A block that defines ``test_*`` functions runs under pytest.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import pytest

from interakt_logging.testing import MockInteraktServer

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_BYTES = 12_000  # the rest goes to docs/, by topic
_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
_MARKER = re.compile(r"<!--\s*(not-run|no-requests):\s*(.*?)\s*-->\s*$")


@dataclass
class Block:
    page: str
    line: int
    code: str
    marker: Optional[str]
    reason: str

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def _blocks() -> List[Block]:
    blocks = []
    for page in PAGES:
        blocks.extend(_blocks_of(page))
    return blocks


def _blocks_of(page: Path) -> List[Block]:
    text = page.read_text(encoding="utf-8")
    blocks = []
    for match in _FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = _MARKER.search(before)
        blocks.append(Block(
            page=page.relative_to(ROOT).as_posix(),
            line=text.count("\n", 0, match.start()) + 2,
            code=match.group(1),
            marker=marker.group(1) if marker else None,
            reason=marker.group(2) if marker else "",
        ))
    return blocks


BLOCKS = _blocks()
RUN = [b for b in BLOCKS if b.marker != "not-run"]


def test_inventory() -> None:
    skipped = [b for b in BLOCKS if b.marker == "not-run"]
    print(f"\nREADME and docs: {len(BLOCKS)} python blocks, {len(RUN)} run, "
          f"{len(skipped)} not run:")
    for block in skipped:
        print(f"  {block.id}: {block.reason}")
    assert any(b.page == "README.md" for b in RUN), "no runnable python block found in README.md"
    for block in BLOCKS:
        assert block.marker is None or block.reason, f"{block.id}: a marker needs a reason"


@pytest.mark.slow
@pytest.mark.parametrize("block", RUN, ids=[b.id for b in RUN])
def test_block_runs(block: Block, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTERAKT_")}
    with MockInteraktServer() as server:
        env.update(INTERAKT_HOST=server.url, INTERAKT_API_KEY="test")
        if re.search(r"^def test_", block.code, re.M):
            (tmp_path / "test_readme_block.py").write_text(block.code)
            command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                       "test_readme_block.py"]
        else:
            (tmp_path / "readme_block.py").write_text(block.code)
            command = [sys.executable, "readme_block.py"]
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=120)
        output = f"{block.id}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        assert result.returncode == 0, output
        if block.marker != "no-requests":
            assert server.requests, (
                f"{output}\nthe block sent nothing to INTERAKT_HOST; mark it "
                "<!-- no-requests: reason --> if that is intended"
            )


def test_readme_is_short() -> None:
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, (
        f"README.md is {size} bytes, more than {README_MAX_BYTES}: put the new text in the "
        "docs/ page of its topic and link it"
    )


_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchors(page: Path) -> List[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.*)$", page.read_text(encoding="utf-8"), re.M)
    return [re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings]


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_relative_links_resolve(page: Path) -> None:
    for target in _LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: link to {target}: no such file"
        if anchor and linked.suffix == ".md":
            assert anchor in _anchors(linked), f"{page.name}: link to {target}: no such heading"


def test_the_readme_test_command_is_the_one_ci_runs() -> None:
    """CI installs and tests exactly as the README says: change both or neither."""
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    ci_tests = [line for line in ci.splitlines() if line.startswith("python -m pytest")]
    assert len(ci_tests) == 1, f".ci/run should run the tests once, found {ci_tests}"
    after = README.read_text(encoding="utf-8").split("Run the tests", 1)[1]
    readme = re.search(r"^python3 -m venv \.venv && .*$", after, re.M)
    assert readme, "README: no install-and-test command under 'Run the tests'"
    assert readme.group(0).endswith(" && " + ci_tests[0]), (readme.group(0), ci_tests[0])
    assert 'pip install -e ".[test]"' in readme.group(0)
    assert 'pip install --quiet -e ".[test]"' in ci
