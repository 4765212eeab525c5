"""Fleet twin in the store: the effect ledger, duplicates, restarts and determinism."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from test_twin import START, command, devices, new_twin, site

from fieldgate.errors import InputInvalid, StoreError
from fieldgate.scenario import Fault
from fieldgate.store import open_engine
from fieldgate.twin import EffectPhase, FleetTwin
from fieldgate.twin._tables import EFFECTS, TWIN_TABLES


def ledger_rows(engine: Engine, twin_id: str, command_id: str) -> int:
    with engine.connect() as conn:
        return conn.execute(
            select(func.count())
            .select_from(EFFECTS)
            .where(EFFECTS.c.twin_id == twin_id, EFFECTS.c.command_id == command_id)
        ).scalar_one()


def test_a_duplicate_dispatch_takes_effect_once(db_url: str) -> None:
    engine = open_engine(db_url)
    twin = new_twin(engine)
    install = command("ber-03-pump-01")
    first = twin.dispatch([install, install], wave=0)  # twice in one call
    assert first.accepted == [install.command_id]
    assert [d.command_id for d in first.duplicates] == [install.command_id]
    assert first.duplicates[0].phase is EffectPhase.running
    (report,) = twin.settle()

    again = twin.dispatch([install], wave=0)  # after it is done
    (duplicate,) = again.duplicates
    assert duplicate.first_outcome.value == "accepted" and duplicate.phase is EffectPhase.done
    assert duplicate.report == report and not duplicate.conflicting
    assert twin.settle() == []

    restarted = FleetTwin.load(engine, "twin")  # after a restart, from another object
    changed = command("ber-03-pump-01", version="2.0.0").model_copy(
        update={"command_id": install.command_id}
    )
    (conflict,) = restarted.dispatch([changed], wave=0).duplicates
    assert conflict.conflicting and conflict.report == report
    assert restarted.settle() == []
    assert restarted.device("ber-03-pump-01").installed["pump-logic"] == "1.9.0"

    assert ledger_rows(engine, "twin", install.command_id) == 1
    (effect,) = restarted.effects("ber-03-pump-01")
    assert effect.command_id == install.command_id and effect.report == report
    assert (effect.version_before, effect.version_after) == ("1.8.0", "1.9.0")


def test_the_ledger_refuses_a_second_row_for_a_command(db_url: str) -> None:
    engine = open_engine(db_url)
    twin = new_twin(engine)
    install = command("ber-03-pump-01")
    twin.dispatch([install], wave=0)
    with engine.connect() as conn:
        row = conn.execute(select(EFFECTS).where(EFFECTS.c.command_id == install.command_id)).one()
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(EFFECTS.insert(), {**row._asdict(), "seq": 99})


def test_a_write_the_database_refuses_retires_the_twin(db_url: str) -> None:
    engine = open_engine(db_url)
    twin = new_twin(engine)
    first, taken = command("ber-03-pump-01"), command("ber-03-pump-02")
    twin.dispatch([first], wave=0)
    with engine.connect() as conn:
        row = conn.execute(select(EFFECTS).where(EFFECTS.c.command_id == first.command_id)).one()
    with engine.begin() as conn:  # a row for the next command is there already
        conn.execute(EFFECTS.insert(), {**row._asdict(), "command_id": taken.command_id})
    with pytest.raises(StoreError, match="load the twin again"):
        twin.dispatch([taken], wave=0)
    with pytest.raises(StoreError, match="load the twin again"):
        twin.settle()
    assert FleetTwin.load(engine, "twin").now == START  # the refused write left nothing


def last_reporter(twin: FleetTwin) -> str:
    return max(twin.effects(), key=lambda e: e.reported_at or START).device_id


def run_history(
    engine: Engine, twin_id: str, seed: int, reload: bool, deferred: bool = False
) -> tuple[list[Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """Drive one twin through a history with faults; optionally reload it before every step,
    or make every step after the faults inside one ``deferred`` block."""
    fleet = devices(8)
    ids = [d.id for d in fleet]
    twin = FleetTwin.create(engine, twin_id, [site()], fleet, seed, START)
    twin.add_faults(
        [
            Fault(kind="install_fails", wave=1, count=1),
            Fault(kind="offline", wave=2, count=2, duration_minutes=25),
            Fault(kind="slow", devices=[ids[3]], duration_minutes=40),
            Fault(kind="health_degrades", wave=2, count=1),
        ]
    )
    steps: list[Callable[[FleetTwin], Any]] = [
        lambda t: t.dispatch([command(d) for d in ids[:3]], wave=0),
        lambda t: t.advance(3),  # mid-flight: some installs done, some running
        lambda t: t.settle(),
        # wave 2 goes out in two calls: its faults' budgets must survive a restart between
        lambda t: t.dispatch([command(d, wave=1) for d in ids[3:6]], wave=1),
        lambda t: t.dispatch([command(d, wave=1) for d in ids[6:]], wave=1),
        lambda t: t.advance(timedelta(minutes=4, seconds=30)),  # offline ones queued
        lambda t: t.set_note(ids[5], "hello"),
        lambda t: t.advance(20),
        lambda t: t.dispatch([command(d, "validate", wave=1) for d in ids], wave=1),
        lambda t: t.settle(),
        lambda t: t.dispatch([command(ids[0], "rollback", version="1.8.0")], wave=0),
        lambda t: t.settle(),
        # a command past its deadline, to the device that just reported: its report falls
        # in the same millisecond, so only the hybrid clock's counter orders the two
        lambda t: t.dispatch([command(last_reporter(t), "validate", wave=2, deadline=START)], 2),
        lambda t: t.settle(),
    ]
    outputs: list[Any] = []
    with twin.deferred() if deferred else nullcontext():
        for step in steps:
            if reload:
                twin = FleetTwin.load(engine, twin_id)
            result = step(twin)
            if isinstance(result, list):
                outputs.append([r.model_dump() for r in result])
            elif result is not None:
                outputs.append(result.model_dump())
            outputs.append((twin.now, [p.model_dump() for p in twin.pending()]))
    effects = [e.model_dump() for e in twin.effects()]
    states = [d.model_dump() for d in twin.devices()]
    return outputs, effects, states


def test_a_restarted_twin_continues_the_same_history(db_url: str) -> None:
    engine = open_engine(db_url)
    uninterrupted = run_history(engine, "a", seed=11, reload=False)
    restarted = run_history(engine, "b", seed=11, reload=True)
    assert restarted == uninterrupted
    _, effects, _ = uninterrupted
    assert {e["status"] for e in effects} >= {"applied", "failed"}
    assert any(e["outcome"] == "queued" for e in effects)  # offline devices were exercised
    assert effects[-1]["status"] == "expired" and effects[-1]["report"]["hlc"]["counter"] == 1


def test_same_seed_same_history_other_seed_other_history(tmp_path: Any) -> None:
    engine = open_engine(f"sqlite:///{tmp_path}/d.db")
    first = run_history(engine, "one", seed=5, reload=False)
    second = run_history(engine, "two", seed=5, reload=False)
    other = run_history(engine, "three", seed=6, reload=False)
    assert first == second
    assert first[1] != other[1]


def test_a_second_writer_is_refused(engine: Engine) -> None:
    first = new_twin(engine)
    second = FleetTwin.load(engine, "twin")
    first.advance(1)
    with pytest.raises(StoreError, match="another writer"):
        second.advance(1)
    with pytest.raises(StoreError, match="load the twin again"):
        second.dispatch([command("ber-03-pump-01")], wave=0)
    assert FleetTwin.load(engine, "twin").now == START + timedelta(minutes=1)


def test_create_or_load_continues_a_stored_twin(engine: Engine) -> None:
    twin = FleetTwin.create_or_load(engine, "t", [site()], devices(3), 4, START)
    twin.dispatch([command("ber-03-pump-01")], wave=0)
    twin.advance(10)
    again = FleetTwin.create_or_load(engine, "t", [site()], devices(3), 4, START)
    assert again.now == START + timedelta(minutes=10)
    assert again.versions("pump-logic") == {"1.8.0": 2, "1.9.0": 1}
    with pytest.raises(InputInvalid, match="seed 4, not 5"):
        FleetTwin.create_or_load(engine, "t", [site()], devices(3), 5, START)
    with pytest.raises(InputInvalid, match="other devices"):
        FleetTwin.create_or_load(engine, "t", [site()], devices(4), 4, START)


def stored_rows(engine: Engine, twin_id: str) -> dict[str, list[dict[str, Any]]]:
    """Every row the twin ``twin_id`` has in the store, table by table, without its id."""
    tables = {}
    with engine.connect() as conn:
        for table in TWIN_TABLES:
            key = table.c.id if table.name == "twin_fleets" else table.c.twin_id
            rows = conn.execute(select(table).where(key == twin_id)).mappings()
            tables[table.name] = sorted(
                ({k: v for k, v in row.items() if k not in ("id", "twin_id")} for row in rows),
                key=repr,
            )
    return tables


def test_a_deferred_history_stores_what_calls_one_by_one_store(db_url: str) -> None:
    engine = open_engine(db_url)
    call_by_call = run_history(engine, "a", seed=11, reload=False)
    deferred = run_history(engine, "b", seed=11, reload=False, deferred=True)
    assert deferred == call_by_call
    one_by_one, together = stored_rows(engine, "a"), stored_rows(engine, "b")
    # One write for the block instead of one per call: only the generation tells them apart.
    assert one_by_one["twin_fleets"][0].pop("generation") == 15
    assert together["twin_fleets"][0].pop("generation") == 2
    assert together == one_by_one
    assert len(together["twin_effects"]) == 18


def test_nothing_is_written_until_the_deferred_block_ends(engine: Engine) -> None:
    twin = new_twin(engine)
    before = stored_rows(engine, "twin")
    with twin.deferred():
        twin.dispatch([command("ber-03-pump-01"), command("ber-03-pump-02")], wave=0)
        with twin.deferred():  # an inner block writes nothing when it ends
            reports = twin.settle()
        # The twin's own reads answer from memory: current inside the block.
        assert twin.versions("pump-logic") == {"1.8.0": 4, "1.9.0": 2}
        assert twin.now > START and not twin.pending()
        assert {e.command_id: e.report for e in twin.effects()} == {
            r.command_id: r for r in reports
        }
        # The store still holds the twin as it was before the block.
        assert stored_rows(engine, "twin") == before
        assert FleetTwin.load(engine, "twin").now == START
    assert stored_rows(engine, "twin") != before
    loaded = FleetTwin.load(engine, "twin")
    assert loaded.now == twin.now and loaded.effects() == twin.effects()


def generation(engine: Engine) -> int:
    generation: int = stored_rows(engine, "twin")["twin_fleets"][0]["generation"]
    return generation


def test_flush_writes_a_deferred_block_so_far(engine: Engine) -> None:
    twin = new_twin(engine)
    twin.flush()  # nothing unwritten: nothing happens
    assert generation(engine) == 0
    with twin.deferred():
        twin.dispatch([command("ber-03-pump-01")], wave=0)
        twin.flush()
        assert [e.phase for e in FleetTwin.load(engine, "twin").effects()] == ["running"]
        twin.settle()
        assert [e.phase for e in FleetTwin.load(engine, "twin").effects()] == ["running"]
    assert [e.phase for e in FleetTwin.load(engine, "twin").effects()] == ["done"]
    assert generation(engine) == 2


def test_a_deferred_block_that_raises_still_writes_what_it_did(engine: Engine) -> None:
    twin = new_twin(engine)
    with pytest.raises(InputInvalid, match="before the twin's clock"), twin.deferred():
        twin.dispatch([command("ber-03-pump-01")], wave=0)
        twin.settle()
        twin.advance(START)  # refused: the clock has moved on
    loaded = FleetTwin.load(engine, "twin")
    assert loaded.now == twin.now and loaded.effects() == twin.effects()
    twin.advance(1)  # the object still matches the store and goes on
    assert FleetTwin.load(engine, "twin").now == twin.now


def test_a_failed_deferred_write_retires_the_twin(engine: Engine) -> None:
    twin = new_twin(engine)
    with pytest.raises(StoreError, match="another writer"), twin.deferred():
        twin.dispatch([command("ber-03-pump-01")], wave=0)
        twin.settle()
        FleetTwin.load(engine, "twin").advance(1)  # a second writer, meanwhile
    with pytest.raises(StoreError, match="load the twin again"):
        twin.settle()
    with pytest.raises(StoreError, match="load the twin again"), twin.deferred():
        pass
    stored = FleetTwin.load(engine, "twin")  # the block's changes are lost together
    assert stored.now == START + timedelta(minutes=1) and stored.effects() == []


def test_a_failed_flush_retires_the_twin_and_the_block_writes_no_more(engine: Engine) -> None:
    twin = new_twin(engine)
    with pytest.raises(StoreError, match="another writer"), twin.deferred():
        twin.dispatch([command("ber-03-pump-01")], wave=0)
        FleetTwin.load(engine, "twin").advance(1)
        twin.flush()
        pytest.fail("the failed flush raises")
    with pytest.raises(StoreError, match="load the twin again"):
        twin.flush()
    assert FleetTwin.load(engine, "twin").effects() == []


@pytest.fixture
def engine(sqlite_url: str) -> Engine:
    return open_engine(sqlite_url)
