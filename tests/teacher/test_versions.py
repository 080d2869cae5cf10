"""Version folders: listing and retention (no models needed: both read only the manifests)."""

import json

import pytest

from teacher.versions import MANIFEST, list_versions, prune


def make_version(ckpt, n: int, save: str = "merged", parent: str = "base-model"):
    folder = ckpt / f"v{n}"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / MANIFEST).write_text(json.dumps({"save": save, "parent": parent}))


def test_list_versions_counts_only_complete_version_folders(tmp_path):
    for n in (1, 2, 10):
        make_version(tmp_path, n)
    (tmp_path / "v3").mkdir()  # no manifest: not a version
    for name in ("v0", "v01", "vx", ".tmp-v4-123", "notes"):
        (tmp_path / name).mkdir()
        (tmp_path / name / MANIFEST).write_text("{}")
    (tmp_path / "v5").write_text("a file, not a folder")
    assert list_versions(tmp_path) == [1, 2, 10]
    assert list_versions(tmp_path / "missing") == []


@pytest.mark.parametrize("keep_last, best, deleted", [
    (2, 1, [2, 3]),
    (2, None, [1, 2, 3]),
    (2, 4, [1, 2, 3]),  # best among the last two
    (1, 2, [1, 3, 4]),
    (9, None, []),
])
def test_prune_keeps_last_k_and_best(tmp_path, keep_last, best, deleted):
    for n in range(1, 6):
        make_version(tmp_path, n, parent=f"../v{n - 1}" if n > 1 else "base-model")
    assert prune(tmp_path, keep_last, best) == deleted
    assert list_versions(tmp_path) == [n for n in range(1, 6) if n not in deleted]


def test_prune_never_deletes_adapter_versions_or_their_parents(tmp_path):
    make_version(tmp_path, 1)  # merged, parent of the adapter v2
    make_version(tmp_path, 2, "adapter", "../v1")
    make_version(tmp_path, 3, "adapter", "../v2")
    make_version(tmp_path, 4)
    make_version(tmp_path, 5)
    make_version(tmp_path, 6)
    assert prune(tmp_path, 1, None) == [4, 5]
    assert list_versions(tmp_path) == [1, 2, 3, 6]


def test_prune_removes_crash_debris_only(tmp_path):
    make_version(tmp_path, 1)
    (tmp_path / ".tmp-v2-4242" / "trainer").mkdir(parents=True)
    (tmp_path / "v2").mkdir()  # incomplete but not ours to judge: left alone
    assert prune(tmp_path, 1, None) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v1", "v2"]


def test_keep_last_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="teacher.sft.keep_last"):
        prune(tmp_path, 0, None)
