"""MkDocs hooks for the documentation site (``mkdocs.yml`` names this file).

- A page line ``<!-- readme-section: TITLE -->`` is replaced by the body of the README's section
  whose ``#`` or ``##`` heading starts with TITLE, up to the next ``#``/``##`` heading: without its
  heading line (the page has its own), its ``###`` headings one level up, its links into ``docs/``
  made relative to the page. The README keeps such a section as its one copy; the site shows it.
- The docstrings' Sphinx roles (``:func:`muonlab.optim.param_groups```), which mkdocstrings shows as
  written, become links where the name is a documented object (an optional cross-reference: no warning
  where it is not) and plain code elsewhere.
- A page line ``<!-- train-config-fields -->`` becomes the table of ``TrainConfig``'s fields: default,
  valid values and meaning, from the help text each field carries (what ``muonlab train --help`` prints).
- The committed study results (``results/``: reports and their plots) join the site's files, outside
  the navigation, so the links the README's sections make to them resolve, and a link to a missing one
  fails the strict build.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File, InclusionLevel

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
INCLUDE = re.compile(r"^<!-- readme-section: (?P<title>.+?) -->$", re.MULTILINE)
FIELDS = "<!-- train-config-fields -->"
ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|exc):<code>(?P<name>[\w.]+)</code>")


def _heading_levels(lines: list[str]) -> list[int]:
    """Each line's heading level (0 for text, and for every line of a fenced code block)."""
    levels, fenced = [], False
    for line in lines:
        fenced ^= line.lstrip().startswith("```")
        heading = re.match(r"(#{1,6}) ", line)
        levels.append(len(heading.group(1)) if heading and not fenced else 0)
    return levels


def readme_section(text: str, title: str) -> str:
    """The body of the README section headed ``#``/``## TITLE…``, as a page shows it; raises when absent."""
    lines = text.splitlines()
    levels = _heading_levels(lines)
    tops = [i for i, level in enumerate(levels) if level in (1, 2)]
    start = next((i for i in tops if lines[i].split(" ", 1)[1].startswith(title)), None)
    if start is None:
        raise ValueError(f"README.md has no section headed '{title}…'; its sections: {[lines[i] for i in tops]}")
    end = next((i for i in tops if i > start), len(lines))
    body = [line[1:] if levels[i] >= 3 else line for i, line in enumerate(lines) if start < i < end]
    return "\n".join(body).replace("](docs/", "](")


def train_config_fields() -> str:
    """``TrainConfig``'s fields as a Markdown table: name, default, valid values, meaning."""
    import dataclasses

    from muonlab.train.config import TrainConfig

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    rows = ["| field | default | valid values | meaning |", "|---|---|---|---|"]
    for field in dataclasses.fields(TrainConfig):
        choices = ", ".join(f"`{c}`" for c in field.metadata.get("choices") or ())
        meaning = cell(field.metadata.get("help", ""))
        rows.append(f"| `{field.name}` | `{field.default!r}` | {cell(choices)} | {meaning} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, page, config, files) -> str:
    text = README.read_text(encoding="utf-8")
    markdown = INCLUDE.sub(lambda match: readme_section(text, match.group("title")), markdown)
    return markdown.replace(FIELDS, train_config_fields()) if FIELDS in markdown else markdown


def on_page_content(html: str, page, config, files) -> str:
    def link(match: re.Match) -> str:
        name = match.group("name")
        code = f"<code>{name}</code>"
        return f'<autoref identifier="{name}" optional>{code}</autoref>' if "." in name else code

    return ROLE.sub(link, html)


def on_files(files, config):
    for path in sorted((ROOT / "results").rglob("*")):
        if path.suffix in (".md", ".png"):
            files.append(File(str(path.relative_to(ROOT)), src_dir=str(ROOT), dest_dir=config["site_dir"],
                              use_directory_urls=config["use_directory_urls"], inclusion=InclusionLevel.NOT_IN_NAV))
    return files
