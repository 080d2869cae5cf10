"""The console's tables (`report.table_header`, `table_line`, `final_table`), built from metrics rows
alone, and the queue kind of a student's jobs."""

from __future__ import annotations

from types import SimpleNamespace

from core.jobs import job_kind
from orchestration.report import RoundRow, final_table, table_header, table_line


def _row(r: int, version: int, accuracy: float, label: str = "smol") -> RoundRow:
    return RoundRow(round=r, teacher_version=version, contexts=[], students={label: label},
                    heldout={label: {"accuracy": accuracy, "n_questions": 33}}, jobs={"dead": 0},
                    student_wait_s=0.0, wall_s=0.0,
                    reference={label: {"base": {"accuracy": 0.032, "n_questions": 33},
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


def test_a_folder_student_is_named_in_full_and_its_columns_line_up():
    folder = "/tmp/pytest-of-someone/gpu_dry/work/models/smollm2-135m-instruct"
    rows = [_row(0, 0, 0.058, folder), _row(1, 0, 0.058, folder)]
    head, line = table_header([folder]), table_line([folder], rows[0])
    assert folder in head and len(head) == len(line)
    final = final_table(CFG, [folder], rows).splitlines()
    assert final[2].startswith("student ") and final[3].startswith(folder + " ")
    assert len(final[2]) == len(final[3])


def test_a_folder_students_job_kind_has_no_double_slash():
    assert job_kind("/runs/x/checkpoints/v1") == "adapt:/runs/x/checkpoints/v1"
