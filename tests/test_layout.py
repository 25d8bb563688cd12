"""README.md's Layout table against the tree: every top-level entry, package folder and module is
named, and everything it names exists; README stays short, and its links point at files."""
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# folders whose modules are each named in the table (by file name)
LISTED_MODULES = ('models', 'miscc', 'benchmarks', 'tools')


def tracked_files() -> list:
    try:
        out = subprocess.run(['git', 'ls-files'], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip('not a git checkout')
    return [Path(p) for p in out.splitlines() if (ROOT / p).exists()]


def layout_section() -> str:
    text = (ROOT / 'README.md').read_text(encoding='utf-8')
    return text.split('\n## Layout\n', 1)[1].split('\n## ', 1)[0]


def test_the_layout_table_names_every_entry_package_and_module():
    layout = layout_section()
    files = tracked_files()
    missing = []
    for top in sorted({p.parts[0] for p in files} - {'README.md', '.gitignore', 'pytest.ini', 'requirements.txt'}):
        if f'`{top}' not in layout:
            missing.append(top)
    for path in files:
        if path.parts[0] not in LISTED_MODULES or path.name == '__init__.py' or len(path.parts) < 2:
            continue
        folder = '/'.join(path.parts[:-1]) + '/'
        if path.suffix in ('.py', '.sh') and f'`{path.name}`' not in layout and f'`{path}`' not in layout:
            missing.append(str(path))
        elif path.suffix not in ('.py', '.sh') and f'`{path.parts[1]}/`' not in layout and folder not in layout:
            missing.append(str(path))
        if path.suffix == '.py' and path.parts[0] == 'miscc' and len(path.parts) > 2 and f'`{folder}`' not in layout:
            missing.append(folder)
    assert not missing, f'README.md Layout does not name: {sorted(set(missing))}'


def test_what_the_layout_table_names_exists():
    layout = layout_section()
    named = set(re.findall(r'`([\w./-]+/)`', layout))      # folders
    named |= {m for m in re.findall(r'`([\w/.-]+\.(?:py|sh|txt|yml))`', layout) if '/' in m}
    gone = [n for n in named if not (ROOT / n).exists()]
    assert not gone, f'README.md Layout names what is not there: {gone}'


def test_readme_is_short_and_its_links_resolve():
    text = (ROOT / 'README.md').read_text(encoding='utf-8')
    assert len(text.splitlines()) <= 300
    links = re.findall(r'\]\(([^)#:]+)\)', text)
    assert links and not [link for link in links if not (ROOT / link).exists()]
    for doc in (ROOT / 'docs').glob('*.md'):
        body = doc.read_text(encoding='utf-8')
        broken = [link for link in re.findall(r'\]\(([^)#:]+)\)', body) if not (doc.parent / link).exists()]
        assert not broken, (doc.name, broken)
