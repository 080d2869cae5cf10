"""Version folders: listing, retention and parent references (no models needed: all read only the manifests)."""

import json

import pytest

from teacher.versions import MANIFEST, list_versions, load_teacher, parent_of, prune


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


@pytest.mark.parametrize("ref", ["../../outside", "../../checkpoints-elsewhere/v1", "../v2", "../v3", "../v1/../../x"])
def test_a_parent_outside_the_checkpoints_folder_is_refused(tmp_path, ref):
    ckpt = tmp_path / "run" / "checkpoints"
    make_version(ckpt, 1)
    make_version(ckpt, 2, "adapter", ref)
    (tmp_path / "run" / "outside").mkdir()
    with pytest.raises(ValueError, match="manifest.json: parent") as err:
        load_teacher(str(ckpt / "v2"))
    assert str(ckpt / "v2" / MANIFEST) in str(err.value) and "earlier version" in str(err.value)


def test_parent_of_follows_a_sibling_and_keeps_the_configured_model(tmp_path):
    make_version(tmp_path, 1)
    make_version(tmp_path, 2, "adapter", "../v1")
    assert parent_of(tmp_path / "v2", {"parent": "../v1"}) == str((tmp_path / "v1").resolve())
    for ref in ("gemma3-270m", "org/model", "/models/base"):  # the run's v0: a name, hub id or folder
        assert parent_of(tmp_path / "v2", {"parent": ref}) == ref
