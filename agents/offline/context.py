"""Context around a request, read as such: ticket fields, ids, dates, mentions, signatures.

Engineers paste change tickets and write emails. A ticket's backout plan is not the request,
a signature is not a site, ``@ana`` is a person and ``21.11.2026`` a date, not a version.
:func:`read_context` takes those out of the text the reader sees and says what they were,
for the plan's rationale.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_SIDE_FIELDS = re.compile(
    r"^[ \t>*-]*(?P<field>back[- ]?out(?: plan)?|roll[- ]?back plan|fall[- ]?back(?: plan)?"
    r"|requested by|requester|reported by|raised by|submitted by|approver|approved by"
    r"|assignee|assigned to|owner|contact|cc|priority|category|status|created|due|risk"
    r"|impact|test plan|testing|validation|verification|communication|attachments?"
    r"|ticket|ref|reference|incident|from|to|sent|date)\s*:(?P<value>.*)$",
    re.IGNORECASE | re.MULTILINE,
)
"""Ticket and email header fields that describe the request instead of making it."""
_SIGN_OFF = re.compile(
    r"^[ \t]*(--\s*|(?:best|kind|warm)?\s*regards,?|thanks?(?: you)?(?: in advance)?,"
    r"|many thanks,?|cheers,|br,?|sent from my \w+.*)$",
    re.IGNORECASE | re.MULTILINE,
)
"""A line that starts a signature: what follows it is who wrote, not what to do."""
_MENTION = re.compile(r"(?<![\w.])@[A-Za-z][\w.-]*")
_DATE = re.compile(
    r"\b(?:\d{1,2}[./]\d{1,2}[./](?:19|20)\d\d|(?:19|20)\d\d[./-]\d{1,2}[./-]\d{1,2})\b"
)
_TICKET = re.compile(r"(?<![\w-])(?:[A-Z][A-Z0-9]{1,9}-\d{2,7}|(?:INC|CHG|RITM|REQ|CR)\d{3,})\b")
_HASH_ID = re.compile(r"(?<!\w)#\d+\b")


@dataclass
class RequestContext:
    """The request text the reader sees, and the context taken out of it."""

    text: str
    notes: list[str] = field(default_factory=list)
    """What the context was, e.g. ``backout plan: restore 2.3.4``, ``@ana``, ``21.11.2026``."""
    tickets: list[str] = field(default_factory=list)
    """Ticket-shaped ids, as typed; the reader decides whether one is meant as a site."""


def _short(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def read_context(request: str) -> RequestContext:
    """Take ticket side fields, signatures, mentions and dates out of ``request``."""
    notes: list[str] = []
    text = request
    sign_off = _SIGN_OFF.search(text)
    if sign_off is not None and sign_off.start() > 0:
        notes.append(f"signed: {_short(text[sign_off.start() :])}")
        text = text[: sign_off.start()]

    def side_field(found: re.Match[str]) -> str:
        notes.append(f"{found['field'].lower()}: {_short(found['value'])}")
        return ""

    text = _SIDE_FIELDS.sub(side_field, text)
    for pattern in (_MENTION, _DATE, _HASH_ID):
        for found in pattern.finditer(text):
            notes.append(found.group(0))
        text = pattern.sub(" ", text)
    tickets = [found.group(0) for found in _TICKET.finditer(text)]
    return RequestContext(text=text, notes=notes, tickets=tickets)
