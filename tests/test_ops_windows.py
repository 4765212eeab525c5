"""Maintenance windows as an operator meets them: how many windows an install may wait
through (``FIELDGATE_COMMAND_WINDOWS``), and a status that says which devices wait for one.

End to end on the command line (chat, approvals, worker, status) and the fleet twin of the
sample: HVAC controllers at muc-01 roll out in its Saturday 01:00-05:00 window (Berlin).
"""

from __future__ import annotations

import getpass
import json
from datetime import timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from test_ops_freeze_stop import invoke
from typer.testing import CliRunner

from fieldgate.cli import app
from fieldgate.cli._output import console
from fieldgate.commands import Action
from fieldgate.config import Config
from fieldgate.graphs.compose import build_context, default_twin
from fieldgate.scenario import Fault, FaultKind
from fieldgate.store import Store

HVAC = "Roll out hvac-controller 2.4.1 to muc-01"
"""24 HVAC controllers at muc-01 in three waves; one safety approval; in maintenance windows."""
SITE, ZONE = "muc-01", "Europe/Berlin"


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables one row to a line, so that a device's state is never folded."""
    monkeypatch.setattr(console, "_width", 200)


def approved_hvac() -> str:
    """The HVAC plan asked for and approved by saf-lee; its plan id (queued)."""
    code, out = invoke("chat", "--as", "eng-ana", "--yes", stdin=HVAC + "\n")
    assert code == 0, out
    with Store.open() as store:
        plan = store.runs.list()[-1].plan_id
    assert invoke("keys", "init", "--as", "saf-lee")[0] == 0
    assert invoke("keys", "enroll", "saf-lee", "--as", getpass.getuser())[0] == 0
    code, out = invoke("approvals", "approve", plan, "--as", "saf-lee", "-m", "window checked")
    assert code == 0 and "queued for a worker" in out, out
    return plan


# --------------------------------------------------------------------------- the setting


def test_fieldgate_command_windows_sets_how_many_windows_an_install_may_start_in(
    initialised_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = approved_hvac()
    monkeypatch.setenv("FIELDGATE_COMMAND_WINDOWS", "3")
    # --max-soak gives the worker run limits of its own: the configured count still holds.
    code, out = invoke("worker", "--once", "--max-soak", "600")
    assert code == 0 and f"{plan}: completed" in out, out
    with Store.open() as store:
        installs = [e for e in default_twin(store).effects() if e.action is Action.install]
        (site,) = [s for s in store.fleet.sites() if s.id == SITE]
    assert len(installs) == 24
    for install in installs:
        assert install.windows is not None and len(install.windows) == 3
        assert all(site.in_maintenance(w.opens) for w in install.windows)
        weeks = [b.opens - a.opens for a, b in pairwise(install.windows)]
        assert weeks == [timedelta(days=7)] * 2  # its window and the next two Saturdays'


def test_the_served_graph_reads_the_count_of_windows_from_the_environment(
    sqlite_url: str,
) -> None:
    assert invoke("init", "--db", sqlite_url)[0] == 0
    config = Config.from_env({"FIELDGATE_COMMAND_WINDOWS": "1"})
    with Store.open(sqlite_url) as store:
        assert build_context(config, store).settings.command_windows == 1
        assert build_context(Config(), store).settings.command_windows == 2


@pytest.mark.parametrize("value", ["0", "13", "two", "-1", "²", "2.5"])
def test_a_bad_count_of_windows_is_one_line_naming_the_variable_and_the_rule(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("FIELDGATE_COMMAND_WINDOWS", value)
    result = CliRunner().invoke(app, ["worker", "--once"])
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.strip().splitlines()
    assert f"FIELDGATE_COMMAND_WINDOWS={value!r}" in line
    assert "expected a count of windows from 1 to 12" in line


# --------------------------------------------------------------------------- the status


def test_status_names_the_devices_whose_install_waits_for_their_next_window(
    initialised_db: str,
) -> None:
    """A controller offline through the whole window is back after it closed: its install
    waits for next Saturday's window. The run completed without it; status says so, by
    the device and its site's local time, not as plain pending or unreachable."""
    plan = approved_hvac()
    with Store.open() as store:
        twin = default_twin(store)
        (site,) = [s for s in store.fleet.sites() if s.id == SITE]
        opens = site.next_maintenance(twin.now)
        assert opens is not None
        late = sorted(d.id for d in store.fleet.devices() if d.site == SITE)[-1]
        back = opens + timedelta(hours=5)  # an hour after the window closed
        minutes = int((back - twin.now).total_seconds() // 60)
        twin.add_faults([Fault(kind=FaultKind.offline, devices=[late], duration_minutes=minutes)])
    code, out = invoke("worker", "--once")
    assert code == 0 and f"{plan}: completed" in out, out

    next_week = opens + timedelta(days=7)
    code, out = invoke("status", plan)
    assert code == 0, out
    said = " ".join(out.split())
    local = f"{next_week.astimezone(ZoneInfo(ZONE)):%a %Y-%m-%d} 01:00 CET, {ZONE}"
    assert f"{late}: waiting for its window (opens {local})" in said, out
    assert "1 waiting for a window" in said and "23 applied" in said, out

    code, out = invoke("status", plan, "--json")
    assert code == 0, out
    run = json.loads(out)["runs"][0]
    assert run["states"]["waiting_window"] == 1 and run["states"]["pending"] == 0
    assert run["states"]["unreachable"] == 0
    (wait,) = run["window_waits"]
    assert wait["devices"] == [late] and wait["site"] == SITE and wait["timezone"] == ZONE
    assert wait["opens"].startswith(next_week.strftime("%Y-%m-%dT%H:%M"))
    assert wait["opens_local"].endswith("01:00 CET")
    with Store.open() as store:
        (effect,) = [e for e in default_twin(store).effects() if e.device_id == late]
        assert effect.started_at is None  # the twin's device holds it, as an agent would
