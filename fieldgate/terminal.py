"""Untrusted text made safe for a person's terminal: the one escaping helper.

Requests, model rationales, manifest descriptions, approval comments, device labels and
tickets come from people and models fieldgate does not trust. Printed as they are, a
control sequence in them can clear the approver's screen (``ESC[2J``), hide text
(``ESC[8m``), retitle the window (``ESC]0;…BEL``), plant a hyperlink (OSC 8), and a bidi
override can make ``deny`` read as ``allow``. :func:`shown` turns every such character
into a visible, inert form, and escapes rich markup so that ``[link=…]`` in the text stays
text. HTML pages escape with :func:`html.escape` instead (``evals/_html.py``).
"""

from __future__ import annotations

import re

from rich.markup import escape

_BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
"""Arabic letter mark, LRM/RLM, the embeddings and overrides, the isolates."""
_SEPARATORS = "\u2028\u2029"
"""Line and paragraph separator: invisible line breaks."""

_UNSAFE = re.compile(f"[\x00-\x08\x0a-\x1f\x7f-\x9f{_BIDI}{_SEPARATORS}]")
_UNSAFE_BUT_NEWLINE = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f{_BIDI}{_SEPARATORS}]")


def _visible(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    if code < 0x20:
        return chr(0x2400 + code)  # the Unicode control picture: ESC is ␛, BEL ␇, LF ␊
    if code == 0x7F:
        return "\u2421"  # ␡
    return f"<U+{code:04X}>"


def shown(text: object, *, multiline: bool = False, markup: bool = True) -> str:
    """Make ``text`` safe to show in a terminal: every control character visible and inert.

    Rules: C0 controls and DEL become their Unicode control pictures (ESC → ``␛``, BEL →
    ``␇``, CR → ``␍``, LF → ``␊``); C1 controls (U+0080–U+009F, the 8-bit CSI U+009B
    among them), bidi controls (U+202A–U+202E, U+2066–U+2069, U+200E, U+200F, U+061C) and
    the line and paragraph separators become ``<U+XXXX>``. Tab stays. Everything else,
    letters of any script and emoji included, passes unchanged.

    Args:
        text: What to show; anything not a string is shown as ``str(text)``.
        multiline: Keep newlines, for places laid out a line at a time (a table cell, a
            description); elsewhere a newline could forge a line of fieldgate's own.
        markup: Also escape rich markup, for text printed through a rich console as markup.
            Off for renderables that do not read markup (``Markdown``, ``Text``, JSON).
    """
    pattern = _UNSAFE_BUT_NEWLINE if multiline else _UNSAFE
    safe = pattern.sub(_visible, text if isinstance(text, str) else str(text))
    return escape(safe) if markup else safe
