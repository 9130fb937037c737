"""The user docs render as written: in README.md and docs/*.md every fenced code block is closed
by a fence of backticks alone on its line (CommonMark ignores a "closer" with text after it, so
the block runs on and swallows the prose that follows), and the fences pair up."""
from __future__ import annotations

import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = sorted([os.path.join(ROOT, "README.md"), *glob.glob(os.path.join(ROOT, "docs", "*.md"))])
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")


def fence_problems(text: str) -> list[str]:
    """Where the fences of ``text`` go wrong, as "line N: what"."""
    problems: list[str] = []
    open_at: tuple[int, str] | None = None  # (line, fence) of the block we are in
    for n, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if m is None:
            continue
        fence, rest = m.group(1), m.group(2)
        if open_at is None:
            if fence[0] == "`" and "`" in rest:
                problems.append(f"line {n}: an opening fence's info string may not hold backticks")
            open_at = (n, fence)
        elif fence[0] == open_at[1][0] and len(fence) >= len(open_at[1]):
            if rest.strip():
                problems.append(f"line {n}: closing fence of the block opened at line {open_at[0]} "
                                f"is followed by {rest.strip()[:30]!r}: it does not close it")
                continue
            open_at = None
    if open_at is not None:
        problems.append(f"line {open_at[0]}: fence never closed")
    return problems


@pytest.mark.parametrize("path", DOCS, ids=[os.path.relpath(p, ROOT) for p in DOCS])
def test_every_fenced_block_closes(path):
    with open(path, encoding="utf-8") as f:
        assert fence_problems(f.read()) == []


def test_the_check_catches_what_broke_the_readme():
    assert fence_problems("```sh\nx\n``` Note that\ntext\n```\nmore\n```\n") == [
        "line 3: closing fence of the block opened at line 1 is followed by 'Note that': it does not close it",
        "line 7: fence never closed"]
    assert fence_problems("```sh\nx\n```\ntext\n```text\ny\n```\n") == []
    assert fence_problems("```sh\nx\n") == ["line 1: fence never closed"]
    assert fence_problems("````md\n```\ninner\n```\n````\n") == []
