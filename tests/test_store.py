"""The run folder: durable rows, a torn last line repaired, no duplicates, one writer at a time."""

from __future__ import annotations

import random

import pytest

from bsight.harness.jobtypes import ResultRow, Unit
from bsight.harness.store import RunFolder, RunStore, StoreError, UnitRows


class Row(ResultRow):
    value: float
    text: str


def unit(fp: str = "abc123") -> Unit:
    return Unit(
        job="accuracy", type="accuracy", id="accuracy/m/dense/t", model="m", method="dense", task="t", fingerprint=fp
    )


def random_rows(n: int) -> list[Row]:
    rng = random.Random()
    return [
        Row(
            key=f"k{i}-{rng.randrange(10**6)}",
            value=rng.random(),
            text="".join(rng.choice('ab|"\n{}') for _ in range(5)),
        )
        for i in range(n)
    ]


def test_rows_round_trip_in_order(tmp_path):
    rows = random_rows(7)
    store = UnitRows(tmp_path / "u.jsonl", Row)
    for r in rows:
        store.append(r)
    store.close()
    again = UnitRows(tmp_path / "u.jsonl", Row, writable=False)
    assert list(again) == rows and again.done == {r.key for r in rows}


def test_duplicate_key_is_refused(tmp_path):
    store = UnitRows(tmp_path / "u.jsonl", Row)
    row = random_rows(1)[0]
    store.append(row)
    with pytest.raises(StoreError, match="already stored"):
        store.append(row)
    store.close()
    assert (tmp_path / "u.jsonl").read_text().count("\n") == 1


def test_torn_last_line_is_cut_and_appending_continues(tmp_path):
    path = tmp_path / "u.jsonl"
    rows = random_rows(5)
    store = UnitRows(path, Row)
    for r in rows[:3]:
        store.append(r)
    store.close()
    whole = path.read_bytes()
    torn = rows[3].model_dump_json().encode()
    cut = random.randrange(1, len(torn))
    path.write_bytes(whole + torn[:cut])  # a kill in the middle of a write

    assert list(UnitRows(path, Row, writable=False)) == rows[:3]  # readers ignore the torn line
    assert path.read_bytes() == whole + torn[:cut]  # and leave the file alone
    store = UnitRows(path, Row)  # a writer cuts it off
    assert path.read_bytes() == whole and store.done == {r.key for r in rows[:3]}
    for r in rows[3:]:
        store.append(r)
    store.close()
    assert list(UnitRows(path, Row, writable=False)) == rows


def test_corrupt_complete_line_is_named_and_set_aside(tmp_path):
    """A complete line that does not parse is left out and named (file line); a writer moves it to
    ``.rejected`` so its sample is redone instead of the whole run stopping."""
    path = tmp_path / "u.jsonl"
    rows = random_rows(2)
    path.write_text(f'{rows[0].model_dump_json()}\n{{"key": 3}}\n{rows[1].model_dump_json()}\n')
    reader = UnitRows(path, Row, writable=False)
    assert list(reader) == rows and reader.problems and reader.problems[0].startswith("line 2:")
    UnitRows(path, Row).close()
    assert list(UnitRows(path, Row, writable=False)) == rows
    assert UnitRows(path, Row, writable=False).problems == []
    assert (tmp_path / "u.jsonl.rejected").read_text() == '{"key": 3}\n'


def test_wrong_row_type_is_refused(tmp_path):
    class Other(ResultRow):
        pass

    store = UnitRows(tmp_path / "u.jsonl", Row)
    with pytest.raises(TypeError, match="expected a Row"):
        store.append(Other(key="x"))
    store.close()


def test_unit_file_name_carries_the_fingerprint(tmp_path):
    run = RunFolder(tmp_path)
    a, b = run.unit_path(unit("aaa")), run.unit_path(unit("bbb"))
    assert a != b and a.parent == b.parent == tmp_path / "results" / "accuracy"
    assert a.name == "m__dense__t.aaa.jsonl"


def test_one_writer_per_run_folder(tmp_path):
    first = RunStore(tmp_path / "run")
    with pytest.raises(StoreError, match="another bsight process"):
        RunStore(tmp_path / "run")
    first.close()
    RunStore(tmp_path / "run").close()  # the lock goes with its holder


def test_fresh_clears_results_and_report(tmp_path):
    store = RunStore(tmp_path / "run")
    rows = store.open_rows(unit(), Row)
    rows.append(random_rows(1)[0])
    rows.close()
    (store.root / "index.html").write_text("x")
    (store.root / "notes.txt").write_text("mine")
    store.close()
    RunStore(tmp_path / "run", fresh=True).close()
    assert not (tmp_path / "run" / "results").exists() and not (tmp_path / "run" / "index.html").exists()
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"  # files bsight did not write are left alone


def test_open_requires_a_run_folder(tmp_path):
    with pytest.raises(StoreError, match="not a bsight run folder"):
        RunFolder.open(tmp_path)
