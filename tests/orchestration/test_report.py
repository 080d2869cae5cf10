"""The console's final table (`report.final_table`), built from metrics rows alone."""

from __future__ import annotations

from types import SimpleNamespace

from orchestration.report import RoundRow, final_table


def _row(r: int, version: int, accuracy: float) -> RoundRow:
    return RoundRow(round=r, teacher_version=version, contexts=[], students={"smol": "smol"},
                    heldout={"smol": {"accuracy": accuracy, "n_questions": 33}}, jobs={"dead": 0},
                    student_wait_s=0.0, wall_s=0.0,
                    reference={"smol": {"base": {"accuracy": 0.032, "n_questions": 33},
                                        "passage": {"accuracy": 0.078, "n_questions": 33}}} if r == 0 else None)


CFG = SimpleNamespace(data=SimpleNamespace(domain="knowledge"), heldout=SimpleNamespace(source="squad"),
                      students=[SimpleNamespace(grader="f1")])


def test_the_final_table_shows_v0_and_the_last_version():
    table = final_table(CFG, ["smol"], [_row(0, 0, 0.058), _row(1, 1, 0.061), _row(2, 2, 0.066)])
    head, cells = table.splitlines()[2:4]
    assert head.split()[1:] == ["base", "passage", "teacher", "v0", "teacher", "v2"]
    assert cells.split()[1:] == ["0.032", "(n=33)", "0.078", "(n=33)", "0.058", "(n=33)", "0.066", "(n=33)"]


def test_a_run_that_trained_no_version_shows_the_teacher_once():
    table = final_table(CFG, ["smol"], [_row(0, 0, 0.058), _row(1, 0, 0.058), _row(2, 0, 0.058)])
    head, cells = table.splitlines()[2:4]
    assert head.split()[1:] == ["base", "passage", "teacher", "v0"]
    assert cells.split()[1:] == ["0.032", "(n=33)", "0.078", "(n=33)", "0.058", "(n=33)"]
