"""Orchestration: the framework's base layer (`orchestration.core`) and its driver (`orchestration.driver`).

The two live in one folder but are separate layers (see the import-linter contract in
pyproject.toml): `core` holds records, configs, the model catalogue and the contexts and imports
nothing above it; `teacher/` and `student/` build on `core`; `driver` (CLI, loops, reports) sits on top.
"""
