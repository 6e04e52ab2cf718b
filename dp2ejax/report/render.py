"""HTML and Markdown layouts of a report's sections.

The HTML page is self-contained: inline CSS, figures as ``data:image/png;base64`` URIs, no
script and no external resource, so it opens from disk (or an e-mail attachment) without a
server. The Markdown page refers to the figures as PNG files beside it (``figures/<name>.png``).
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence

from dp2ejax.report.figures import Image
from dp2ejax.report.sections import Code, Heading, Paragraph, Section, Table

FIGURES_DIR = "figures"

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
  color: #1b1b1b; background: #fff; margin: 0; line-height: 1.45; }
main { max-width: 1000px; margin: 0 auto; padding: 1.5rem; }
h1 { font-size: 1.7rem; margin-bottom: 0.3rem; }
h2 { font-size: 1.3rem; border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; margin-top: 2rem; }
h3 { font-size: 1.05rem; margin-top: 1.4rem; }
nav ul { list-style: none; padding: 0; display: flex; flex-wrap: wrap; gap: 0.4rem 1rem; }
nav a { color: #0b5cad; text-decoration: none; }
table { border-collapse: collapse; margin: 0.6rem 0 1rem; font-size: 0.88rem; display: block;
  overflow-x: auto; max-width: 100%; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.55rem; text-align: left;
  font-variant-numeric: tabular-nums; white-space: nowrap; }
th { background: #f4f4f4; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.85rem; color: #555; }
pre { background: #f6f8fa; padding: 0.7rem; overflow-x: auto; font-size: 0.82rem; }
""".strip()


def figure_path(image: Image) -> str:
    """Where the Markdown page finds ``image``, relative to it."""
    return f"{FIGURES_DIR}/{image.name}.png"


def render_html(title: str, sections: Sequence[Section]) -> str:
    """The report as one self-contained HTML page."""
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title>",
        f"<style>\n{_CSS}\n</style>",
        "</head>",
        "<body>",
        "<main>",
        f"<h1>{esc(title)}</h1>",
        "<nav><ul>",
        *(f'<li><a href="#{s.id}">{esc(s.title)}</a></li>' for s in sections),
        "</ul></nav>",
    ]
    for section in sections:
        parts.append(f'<section id="{section.id}">')
        parts.append(f"<h2>{esc(section.title)}</h2>")
        for block in section.blocks:
            parts.append(_html_block(block))
        parts.append("</section>")
    parts += ["</main>", "</body>", "</html>", ""]
    return "\n".join(parts)


def _html_block(block) -> str:
    esc = html.escape
    if isinstance(block, Heading):
        return f"<h3>{esc(block.text)}</h3>"
    if isinstance(block, Paragraph):
        return f"<p>{esc(block.text)}</p>"
    if isinstance(block, Code):
        return f"<pre><code>{esc(block.text)}</code></pre>"
    if isinstance(block, Table):
        head = "".join(f"<th>{esc(h)}</th>" for h in block.headers)
        body = "\n".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>"
                         for row in block.rows)
        return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"
    if isinstance(block, Image):
        data = base64.b64encode(block.png).decode("ascii")
        caption = f"<figcaption>{esc(block.caption)}</figcaption>" if block.caption else ""
        return (f'<figure id="figure-{block.name}"><img src="data:image/png;base64,{data}" '
                f'alt="{esc(block.alt)}">{caption}</figure>')
    raise TypeError(f"unknown block {type(block).__name__}")  # pragma: no cover


def render_markdown(title: str, sections: Sequence[Section]) -> str:
    """The report as Markdown, figures referred to as ``figures/<name>.png``."""
    parts = [f"# {title}", ""]
    parts += [f"- [{s.title}](#{s.id})" for s in sections]
    parts.append("")
    for section in sections:
        parts += [f'<a id="{section.id}"></a>', "", f"## {section.title}", ""]
        for block in section.blocks:
            parts += [_markdown_block(block), ""]
    return "\n".join(parts)


def _cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _markdown_block(block) -> str:
    if isinstance(block, Heading):
        return f"### {block.text}"
    if isinstance(block, Paragraph):
        return block.text
    if isinstance(block, Code):
        fence = "````" if "```" in block.text else "```"
        return f"{fence}{block.language}\n{block.text}\n{fence}"
    if isinstance(block, Table):
        lines = ["| " + " | ".join(_cell(h) for h in block.headers) + " |",
                 "|" + "|".join("---" for _ in block.headers) + "|"]
        lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in block.rows]
        return "\n".join(lines)
    if isinstance(block, Image):
        alt = block.alt.replace("[", "(").replace("]", ")")
        text = f"![{alt}]({figure_path(block)})"
        return f"{text}\n\n*{block.caption}*" if block.caption else text
    raise TypeError(f"unknown block {type(block).__name__}")  # pragma: no cover
