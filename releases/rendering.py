"""Markdown for release notes: checked and rendered once, when written; never on a page view.

cmark-gfm (the renderer PyPI uses for READMEs) parses in linear time, even on input
built to be slow. Its HTML is then sanitised with nh3: no scripts, no event handlers,
no javascript: links. nh3's HTML parser slows down with the square of how deeply
elements nest (thousands of unclosed ``<div>`` or ``>`` took minutes), so HTML that
nests deeper than MAX_NESTING is refused before it gets there, as is text over
RELEASE_NOTES_MAX_BYTES.
"""

from __future__ import annotations

import re

import cmarkgfm
import nh3
from cmarkgfm.cmark import Options
from django.conf import settings
from django.core.exceptions import ValidationError

MAX_NESTING = 64
TAGS = {
    "a", "abbr", "b", "blockquote", "br", "code", "dd", "del", "dl", "dt", "em", "h1", "h2", "h3", "h4", "h5",
    "h6", "hr", "i", "img", "li", "ol", "p", "pre", "strong", "sub", "sup", "table", "tbody", "td", "th",
    "thead", "tr", "ul",
}  # fmt: skip
ATTRIBUTES = {"a": {"href", "title"}, "img": {"src", "alt", "title"}, "th": {"align"}, "td": {"align"}}
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9-]*)[^>]*?(/?)>")
_HEADING = re.compile(r"<(/?)h([1-6])\b", re.IGNORECASE)
# A card's or the notes' `# Title` sits below the page's own <h1> and its sections' <h2>.
HEADING_SHIFT = 2
_PRE_LANG = re.compile(r'<pre lang="[^"]*">')


def normalise_newlines(text: str) -> str:
    """Text as stored: `\n` line ends, whatever a browser's textarea sent (`\r\n`, `\r`)."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def validate_size(text: str, what: str = "Release notes") -> None:
    limit = settings.RELEASE_NOTES_MAX_BYTES
    size = len(text.encode("utf-8"))
    if size > limit:
        raise ValidationError(
            f"{what} are {size:,} bytes; at most {limit:,} are allowed (RELEASE_NOTES_MAX_BYTES). "
            "Link to a longer changelog instead.",
            code="too_long",
        )


def render_markdown(text: str, what: str = "Release notes") -> str:
    """Sanitised HTML for `text`; ValidationError if it is too long or nests too deeply to sanitise."""
    validate_size(text, what)
    if not text.strip():
        return ""
    html = cmarkgfm.github_flavored_markdown_to_html(text, options=Options.CMARK_OPT_UNSAFE)
    if nesting_depth(html, stop_above=MAX_NESTING) > MAX_NESTING:
        raise ValidationError(
            f"{what} nest elements more than {MAX_NESTING} deep (quotes, lists or HTML tags left open); flatten them.",
            code="too_deep",
        )
    return nh3.clean(
        _PRE_LANG.sub("<pre>", demote_headings(html)),  # cmark's lang="python" is no language code
        tags=TAGS,
        attributes=ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
    )


def demote_headings(html: str) -> str:
    """`<h1>` becomes `<h3>`, and so on down to `<h6>`: one <h1> per page, the page's sections above."""
    return _HEADING.sub(lambda m: f"<{m.group(1)}h{min(6, int(m.group(2)) + HEADING_SHIFT)}", html)


def nesting_depth(html: str, stop_above: int) -> int:
    """The deepest nesting of elements, or the first depth above `stop_above` (so linear time).

    A start tag stays open until an end tag of its name closes it (with whatever opened
    after it); stray end tags close nothing, as in a browser. Tags an HTML parser would
    close implicitly count as open, which can only overstate the depth nh3 sees.
    """
    open_tags: list[str] = []
    deepest = 0
    for match in _TAG.finditer(html):
        closing, name, self_closing = match.groups()
        name = name.lower()
        if closing:
            if name in open_tags:
                del open_tags[len(open_tags) - 1 - open_tags[::-1].index(name) :]
        elif not self_closing and name not in VOID:
            open_tags.append(name)
            deepest = max(deepest, len(open_tags))
            if deepest > stop_above:
                break
    return deepest
