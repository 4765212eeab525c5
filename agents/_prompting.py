"""How prompts carry data: tagged sections, with untrusted text fenced and labelled as data.

Every prompt fieldgate sends is plain text a real model reads; the sections use
XML-like tags so that a model (and the offline model) can tell the engineer's
request, the fleet summary and untrusted text apart. Untrusted text is escaped so
that it cannot close its own fence.
"""

from __future__ import annotations

import json
import re
from typing import Any

_SECTION = re.compile(r"<(?P<tag>[a-z_]+)(?P<attrs>[^>]*)>\n(?P<body>.*?)\n</(?P=tag)>", re.DOTALL)
_ATTR = re.compile(r'([a-z_]+)="([^"]*)"')


def section(tag: str, body: str, **attrs: str) -> str:
    """Wrap ``body`` in ``<tag attrs>…</tag>``."""
    rendered = "".join(f' {k}="{v}"' for k, v in attrs.items())
    return f"<{tag}{rendered}>\n{body}\n</{tag}>"


def json_section(tag: str, value: Any) -> str:
    """A section holding ``value`` as JSON."""
    return section(tag, json.dumps(value, sort_keys=True, default=str), format="json")


def untrusted(source: str, text: str) -> str:
    """Fence untrusted text as data: it is shown, never obeyed."""
    # Neutralise anything that looks like a tag so the text cannot close the fence.
    safe = text.replace("<", "‹").replace(">", "›")
    return section("untrusted_data", safe, source=source)


def read_sections(text: str) -> dict[str, list[tuple[dict[str, str], str]]]:
    """Find every tagged section in ``text``: tag → [(attributes, body), …]."""
    found: dict[str, list[tuple[dict[str, str], str]]] = {}
    for match in _SECTION.finditer(text):
        attrs = dict(_ATTR.findall(match["attrs"]))
        found.setdefault(match["tag"], []).append((attrs, match["body"]))
    return found


def first_section(text: str, tag: str) -> str | None:
    """The body of the first ``tag`` section in ``text``, if any."""
    bodies = read_sections(text).get(tag)
    return bodies[0][1] if bodies else None
