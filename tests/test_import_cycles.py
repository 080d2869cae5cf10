"""No import cycles between the project's modules, function-local imports included, no allowlist.

import-linter's layers contract sees imports between layers only; a cycle inside one layer (core,
orchestration, teacher, student) needs this test. grimp (the graph library under import-linter) records
every import statement, wherever it stands in a module."""

from __future__ import annotations

import grimp

PACKAGES = ("core", "teacher", "student", "orchestration")


def import_cycles(*packages: str) -> list[tuple[str, ...]]:
    """Every cycle through a direct import a -> b (with the shortest way back from b to a), each
    rotated to start at its smallest module, so one cycle is listed once."""
    graph = grimp.build_graph(*packages, cache_dir=None)
    found = set()
    for a in graph.modules:
        for b in graph.find_modules_directly_imported_by(a):
            back = graph.find_shortest_chain(importer=b, imported=a)
            if back:
                cycle = (a, *back[:-1])
                i = cycle.index(min(cycle))
                found.add(cycle[i:] + cycle[:i])
    return sorted(found)


def test_the_project_has_no_import_cycles():
    cycles = import_cycles(*PACKAGES)
    assert not cycles, "import cycles (each module imports the next, the last imports the first):\n" + "\n".join(
        " -> ".join(c) for c in cycles)


def test_a_planted_cycle_is_caught(tmp_path, monkeypatch):
    """A two-module cycle, one side a function-local import, and a module outside it."""
    pkg = tmp_path / "planted_cycle"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from planted_cycle import b\n    return b\n")
    (pkg / "b.py").write_text("import planted_cycle.a\n")
    (pkg / "c.py").write_text("import planted_cycle.b\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert import_cycles("planted_cycle") == [("planted_cycle.a", "planted_cycle.b")]
