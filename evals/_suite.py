"""Find and load scenario files: every good file becomes a scenario, every bad one an error.

A bad file (unknown keys, wrong types, devices or modules that do not exist, an id used
twice) never stops the suite: it is reported with the file and the field, and the rest runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from fieldgate.errors import FieldgateError, ScenarioInvalid
from fieldgate.evals._results import LoadError
from fieldgate.scenario import Scenario, load_scenario

SUFFIXES = (".yaml", ".yml")
"""File endings read as scenarios when a directory is given."""


@dataclass(frozen=True)
class SuiteEntry:
    """One loaded scenario and the file it came from."""

    file: str
    scenario: Scenario


@dataclass
class Suite:
    """The scenarios to run and the files that could not be loaded."""

    entries: list[SuiteEntry] = field(default_factory=list)
    errors: list[LoadError] = field(default_factory=list)


def scenario_files(paths: Iterable[str | Path]) -> tuple[list[Path], list[LoadError]]:
    """Expand files and directories (recursively) into scenario files, in a stable order."""
    files: list[Path] = []
    errors: list[LoadError] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
            if not found:
                errors.append(LoadError(file=str(path), error=f"{path}: no *.yaml scenario files"))
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            errors.append(LoadError(file=str(path), error=f"{path}: no such file or directory"))
    unique = list(dict.fromkeys(p.resolve() for p in files))
    by_resolved = {p.resolve(): p for p in files}
    return [by_resolved[p] for p in unique], errors


def check_references(scenario: Scenario, source: str) -> None:
    """Refuse expectations that name modules or versions the scenario does not have.

    The scenario contract checks faults and injections; this adds what ``expect`` names, so
    that a typo in a module name fails loudly instead of never matching.

    Raises:
        ScenarioInvalid: naming the file and the field.
    """
    catalog = {(e.name, e.version) for e in scenario.catalog}
    modules = {name for name, _ in catalog}
    installed = {m for d in scenario.fleet.all_devices() for m in d.installed}
    problems: list[tuple[str, str]] = []
    expect = scenario.expect
    if expect.plan is not None:
        if expect.plan.module is not None and expect.plan.module not in modules:
            problems.append(
                ("expect.plan.module", f"unknown module {expect.plan.module!r} (not in catalog)")
            )
        if expect.plan.version is not None:
            module = expect.plan.module
            known = {v for n, v in catalog if module is None or n == module}
            if expect.plan.version not in known:
                problems.append(
                    (
                        "expect.plan.version",
                        f"version {expect.plan.version!r} of {module or 'any module'} "
                        "is not in the catalog",
                    )
                )
    if expect.devices is not None and expect.devices.versions is not None:
        for module in expect.devices.versions:
            if module not in modules and module not in installed:
                problems.append(
                    (
                        f"expect.devices.versions.{module}",
                        f"unknown module {module!r} (not in catalog nor installed on any device)",
                    )
                )
    if expect.approvals_required is not None:
        roles = [r.role for r in expect.approvals_required]
        for role in {r for r in roles if roles.count(r) > 1}:
            problems.append(("expect.approvals_required", f"role {role!r} is listed twice"))
    if problems:
        raise ScenarioInvalid(source, problems)


def load_suite(paths: Iterable[str | Path]) -> Suite:
    """Load every scenario under ``paths``; bad files become errors, the rest still loads."""
    files, errors = scenario_files(paths)
    suite = Suite(errors=list(errors))
    seen: dict[str, str] = {}
    for path in files:
        source = str(path)
        try:
            scenario = load_scenario(path)
            check_references(scenario, source)
        except FieldgateError as exc:
            suite.errors.append(LoadError(file=source, error=str(exc)))
            continue
        if scenario.id in seen:
            suite.errors.append(
                LoadError(
                    file=source,
                    error=f"{source}: id: {scenario.id!r} is already the id of {seen[scenario.id]}",
                )
            )
            continue
        seen[scenario.id] = source
        suite.entries.append(SuiteEntry(source, scenario))
    return suite
