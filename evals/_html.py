"""The HTML report: one self-contained file (inline CSS, no scripts) with every run's detail.

Scenario text is untrusted (the injection suites put ``<script>`` in it on purpose), so every
value goes through :func:`html.escape`; nothing is inserted raw but the page's own markup.
Control and bidi characters are first made visible by :func:`fieldgate.terminal.shown`, as
in the terminal, so that a bidi override cannot reorder what a reviewer reads.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

from fieldgate.evals._results import EvalResults, RunResult, ScenarioResult, figure
from fieldgate.terminal import shown

PAYLOAD_CHARS = 400
"""Longest payload shown in an audit row before it is cut (the cut is marked)."""

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#1d232a;max-width:1400px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:16px 0 6px}
table{border-collapse:collapse;margin:6px 0 12px}
th,td{border:1px solid #d8dde3;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f2f4f7}td.n{text-align:right;font-variant-numeric:tabular-nums}
.pass{color:#17743a;font-weight:600}.fail{color:#b42318;font-weight:600}
.warn{color:#9a6700;font-weight:600}.muted{color:#667085}
pre,code{font:12px/1.35 ui-monospace,monospace;white-space:pre-wrap;word-break:break-word}
pre{background:#f6f8fa;padding:6px 8px;margin:4px 0}
details{margin:4px 0}summary{cursor:pointer}
pre.trail{font-size:11px;line-height:1.3;word-break:break-all}
section.scenario{border-left:4px solid #d0d5dd;padding-left:12px;margin:18px 0}
section.scenario.failing{border-left-color:#b42318}section.scenario.passing{border-left-color:#17743a}
"""


def _e(value: Any) -> str:
    """Escape any value for HTML text (``<``, ``>`` and ``&``; controls and bidi made visible)."""
    text = value if isinstance(value, str) else _json(value)
    return escape(shown(text, multiline=True, markup=False), quote=False)


def _attr(value: str) -> str:
    """Escape a value for a double-quoted attribute (quotes as well)."""
    return escape(shown(value, markup=False), quote=True)


def _json(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, sort_keys=True, default=str, ensure_ascii=False, indent=indent)


def _status(passed: bool, text: str | None = None) -> str:
    label = text or ("pass" if passed else "fail")
    return f'<span class="{"pass" if passed else "fail"}">{_e(label)}</span>'


def _summary(results: EvalResults) -> str:
    s = results.summary
    rows = [
        ("model", s.model),
        ("k (runs per scenario)", s.k),
        ("seeds", f"{s.seed} … {s.seed + s.k - 1}"),
        ("scenarios / runs", f"{s.scenarios} / {s.runs}"),
        ("pass^1", figure(s.pass_1)),
        *([(f"pass^{s.k}", figure(s.pass_k))] if s.k > 1 else []),
        ("safety violations", s.safety_violations),
        ("errors", s.errors),
        ("fault blast radius (mean devices)", figure(s.blast_radius_mean, "no fault halted")),
        ("time to halt (mean virtual minutes)", figure(s.time_to_halt_minutes_mean, "-")),
        ("tokens in / out", f"{s.tokens_in} / {s.tokens_out}"),
        ("wall time", f"{s.wall_time_s:.1f} s"),
    ]
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    many = s.k > 1
    categories = "".join(
        f"<tr><td>{_e(name)}</td><td class=n>{c.scenarios}</td><td class=n>{figure(c.pass_1)}</td>"
        + (f"<td class=n>{figure(c.pass_k)}</td>" if many else "")
        + f"<td class=n>{c.safety_violations}</td></tr>"
        for name, c in s.by_category.items()
    )
    pass_k = f"<th>pass^{s.k}</th>" if many else ""
    return (
        f"<table>{body}</table>"
        "<h3>By category</h3><table><tr><th>category</th><th>scenarios</th><th>pass^1</th>"
        f"{pass_k}<th>safety violations</th></tr>{categories}</table>"
    )


def _errors(results: EvalResults) -> str:
    if not results.errors:
        return ""
    items = "".join(
        f"<li><code>{_e(e.file)}</code><pre>{_e(e.error)}</pre></li>" for e in results.errors
    )
    return f'<h2 class="fail">Scenario files that could not run</h2><ul>{items}</ul>'


def _index(results: EvalResults) -> str:
    k = results.summary.k
    rows = []
    for r in results.scenarios:
        violations = sum(run.safety_violations for run in r.runs)
        ok = r.passes == len(r.runs)
        outcomes = ", ".join(dict.fromkeys(run.outcome for run in r.runs))
        rows.append(
            f'<tr><td><a href="#s-{_attr(r.id)}">{_e(r.id)}</a></td><td>{_e(r.category)}</td>'
            f"<td class=n>{_status(ok, f'{r.passes}/{len(r.runs)}')}</td>"
            f"<td class=n>{figure(r.pass_k)}</td><td>{_e(outcomes)}</td>"
            f'<td class=n><span class="{"fail" if violations else "muted"}">{violations}</span>'
            "</td></tr>"
        )
    return (
        "<table><tr><th>scenario</th><th>category</th><th>passed</th>"
        f"<th>pass^{k}</th><th>outcome</th><th>safety violations</th></tr>{''.join(rows)}</table>"
    )


def _checks(run: RunResult) -> str:
    if not run.failed_checks:
        return f'<p class="muted">{run.checks} check(s), all passed.</p>'
    rows = "".join(
        f"<tr><td><code>{_e(c.check)}</code></td><td><pre>{_e(_json(c.expected, 1))}</pre></td>"
        f"<td><pre>{_e(_json(c.actual, 1))}</pre></td><td>{_e(c.detail)}</td></tr>"
        for c in run.failed_checks
    )
    return (
        f'<p class="fail">{len(run.failed_checks)} of {run.checks} check(s) failed</p>'
        "<table><tr><th>check</th><th>expected</th><th>happened</th><th>why</th></tr>"
        f"{rows}</table>"
    )


def _violations(run: RunResult) -> str:
    if not run.violations:
        return ""
    items = "".join(
        f"<li><code>{_e(v.kind.value)}</code> {_e(v.detail)}</li>" for v in run.violations
    )
    return f'<p class="fail">Safety violations</p><ul>{items}</ul>'


def _trail(run: RunResult) -> str:
    if not run.trail:
        return '<p class="muted">No audit trail.</p>'
    lines = []
    for event in run.trail:
        payload = _json(event.get("payload", {}))
        if len(payload) > PAYLOAD_CHARS:
            payload = payload[:PAYLOAD_CHARS] + f" … ({len(payload)} characters)"
        lines.append(
            f"#{event.get('seq')} {event.get('at')} {event.get('actor')} "
            f"{event.get('kind')} {payload}"
        )
    return (
        f"<details><summary>Audit trail ({len(run.trail)} events: seq, time, actor, kind, "
        f'payload)</summary><pre class="trail">{_e(chr(10).join(lines))}</pre></details>'
    )


def _run(run: RunResult) -> str:
    figures = [
        f"outcome <b>{_e(run.outcome)}</b>",
        f"touched {run.touched}",
        f"tokens {run.tokens_in}/{run.tokens_out}",
        f"{run.wall_time_s:.2f} s",
    ]
    if run.blast_radius is not None:
        figures.append(f"blast radius {run.blast_radius}")
    if run.time_to_halt_minutes is not None:
        figures.append(f"time to halt {run.time_to_halt_minutes:g} min")
    reasons = "".join(f"<li>{_e(r)}</li>" for r in run.reasons)
    error = f"<pre class=fail>{_e(run.error)}</pre>" if run.error else ""
    violations = f" · {run.safety_violations} safety violation(s)" if run.safety_violations else ""
    return (
        f"<details{' open' if not run.passed else ''}><summary>seed {run.seed}: "
        f"{_status(run.passed)} · {_e(run.outcome)}{_e(violations)}</summary>"
        f"<p>{' · '.join(figures)}</p>"
        f"{f'<ul>{reasons}</ul>' if reasons else ''}{error}"
        f"{_checks(run)}{_violations(run)}{_trail(run)}</details>"
    )


def _scenario(result: ScenarioResult) -> str:
    ok = result.passes == len(result.runs)
    return (
        f'<section id="s-{_attr(result.id)}" class="scenario {"passing" if ok else "failing"}">'
        f"<h3>{_e(result.id)} {_status(ok, f'{result.passes}/{len(result.runs)}')}</h3>"
        f"<p>{_e(result.category)} · <code>{_e(result.file)}</code></p>"
        f"<p>{_e(result.description)}</p>"
        f"<p>Request:</p><pre>{_e(result.request)}</pre>"
        f"<details><summary>Expected</summary><pre>{_e(_json(result.expect, 2))}</pre></details>"
        f"{''.join(_run(run) for run in result.runs)}</section>"
    )


def render_html(results: EvalResults) -> str:
    """The whole report as one HTML document."""
    s = results.summary
    title = f"fieldgate eval: {s.model}, k={s.k}, pass^{s.k} {figure(s.pass_k)}"
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_e(title)}</h1>"
        '<p class="muted">Self-contained report of <code>fieldgate eval run</code>: a scenario '
        "passes a run only when every check of its <code>expect</code> passes; safety "
        "violations are counted apart, whatever <code>expect</code> says.</p>"
        f"<h2>Summary</h2>{_summary(results)}{_errors(results)}"
        f"<h2>Scenarios</h2>{_index(results)}"
        f"<h2>Detail</h2>{''.join(_scenario(r) for r in results.scenarios)}"
        "</body></html>\n"
    )
