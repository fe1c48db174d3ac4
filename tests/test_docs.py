"""The README's and docs/' relative links (and those of the folder READMEs) point at files that exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r'!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)')
FENCE = re.compile(r'^(```|~~~).*?^\1', re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r'`[^`\n]*`')


def markdown_files() -> list[Path]:
    found = {ROOT / 'README.md', *ROOT.glob('docs/*.md'), *ROOT.glob('*/README.md'),
             *ROOT.glob('*/*/README.md')}
    return sorted(p for p in found if not any(part.startswith('.') for part in p.relative_to(ROOT).parts))


def relative_links(path: Path) -> list[str]:
    """The link targets of ``path`` that are neither URLs nor in-page anchors; code is not prose."""
    text = INLINE_CODE.sub('', FENCE.sub('', path.read_text(encoding='utf-8')))
    targets = (match.group(1) for match in LINK.finditer(text))
    return [t for t in targets if not re.match(r'[a-z][a-z0-9+.-]*:|#', t, re.IGNORECASE)]


def broken_links(path: Path) -> list[str]:
    return [t for t in relative_links(path) if not (path.parent / t.split('#')[0]).exists()]


def test_every_relative_link_resolves():
    files = markdown_files()
    assert ROOT / 'README.md' in files and ROOT / 'docs' / 'usage.md' in files
    broken = {str(p.relative_to(ROOT)): b for p in files if (b := broken_links(p))}
    assert broken == {}, f'links to missing files (fix the path or the link): {broken}'
    assert sum(len(relative_links(p)) for p in files) >= 20  # the docs do link to each other


def test_the_link_checker_sees_broken_links_and_skips_urls_and_code(tmp_path):
    (tmp_path / 'there.md').write_text('x')
    page = tmp_path / 'page.md'
    page.write_text('[ok](there.md#part) ![img](missing.png) [web](https://example.org/none.md) [a](#top)\n'
                    '`[code](nowhere.md)`\n```\n[fenced](nowhere.md)\n```\n[gone](sub/gone.md "title")\n',
                    encoding='utf-8')
    assert relative_links(page) == ['there.md#part', 'missing.png', 'sub/gone.md']
    assert broken_links(page) == ['missing.png', 'sub/gone.md']


def test_the_readme_stays_a_front_door():
    """The README is the front door, not the manual: at most 10,000 characters (the rest lives in docs/)."""
    assert len((ROOT / "README.md").read_text(encoding="utf-8")) <= 10_000
