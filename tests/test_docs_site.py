"""The documentation site (``mkdocs.yml``, ``docs/``, ``scripts/docs_hooks.py``): its README-section
includes resolve, and its strict build fails on a broken link or API reference, and on nothing else.
``scripts/quickstart test`` builds the real site strictly; here a copy with two planted faults."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mkdocs", reason="the documentation extra: pip install -e '.[docs]'")
pytest.importorskip("mkdocstrings", reason="the documentation extra: pip install -e '.[docs]'")

ROOT = Path(__file__).resolve().parents[1]


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "scripts" / "docs_hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_section_is_the_body_up_to_the_next_section():
    text = "# top\nintro\n## A one\n```bash\n# a comment, not a heading\n```\n### sub\nx [p](docs/p.md)\n## B\ny\n"
    body = _hooks().readme_section(text, "A")
    assert body == "```bash\n# a comment, not a heading\n```\n## sub\nx [p](p.md)"
    assert _hooks().readme_section(text, "top") == "intro"
    with pytest.raises(ValueError, match=r"no section headed 'C…'; its sections: \['# top', '## A one', '## B'\]"):
        _hooks().readme_section(text, "C")


def test_sphinx_roles_become_links_or_plain_code():
    html = "see :func:<code>muonlab.optim.param_groups</code> and :class:<code>Muon</code>, not role:<code>x</code>"
    assert _hooks().on_page_content(html, None, None, None) == (
        'see <autoref identifier="muonlab.optim.param_groups" optional><code>muonlab.optim.param_groups</code>'
        "</autoref> and <code>Muon</code>, not role:<code>x</code>")


def test_the_train_config_table_lists_every_field_with_its_choices():
    import dataclasses

    from muonlab.train.config import TrainConfig

    rows = _hooks().train_config_fields().splitlines()[2:]
    assert [row.split("|")[1].strip(" `") for row in rows] == [f.name for f in dataclasses.fields(TrainConfig)]
    schedule = next(row for row in rows if row.startswith("| `schedule` |"))
    assert "`cosine`, `wsd`, `linear`, `constant`" in schedule


def test_every_readme_section_a_page_shows_exists():
    hooks = _hooks()
    readme = (ROOT / "README.md").read_text()
    pages = [page.read_text() for page in (ROOT / "docs").rglob("*.md")]
    titles = [match.group("title") for text in pages for match in hooks.INCLUDE.finditer(text)]
    assert "Experiments" in titles
    for title in titles:
        assert hooks.readme_section(readme, title).strip(), title


@pytest.mark.slow
def test_strict_build_fails_on_a_broken_link_and_reference_and_on_nothing_else(tmp_path):
    """The real pages with one broken link and one broken API reference planted: the strict build fails
    naming exactly those two, so the pages as committed build clean."""
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    with open(tmp_path / "docs" / "sft.md", "a") as page:
        page.write("\nA [broken link](nowhere.md) and [`NoSuch`][muonlab.optim.NoSuch].\n")
    config = (ROOT / "mkdocs.yml").read_text()
    config = (config.replace("docs_dir: docs", f"docs_dir: {tmp_path / 'docs'}")
              .replace("  - scripts/docs_hooks.py", f"  - {ROOT / 'scripts' / 'docs_hooks.py'}")
              .replace("paths: [src]", f"paths: [{ROOT / 'src'}]"))
    (tmp_path / "mkdocs.yml").write_text(config)
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(tmp_path / "mkdocs.yml"),
                           "-d", str(tmp_path / "site")], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode != 0
    warnings = re.findall(r"^WARNING +- +(.+)$", proc.stderr, re.MULTILINE)
    assert len(warnings) == 2, proc.stderr[-3000:]
    assert "'nowhere.md'" in warnings[0] and "muonlab.optim.NoSuch" in warnings[1]
