"""The one artefact-directory protocol (`raylrec/artifacts.py`): claim refuses what raylrec did
not write, the manifest is the commit, readers read only what it lists and check it. No Ray:
the fast tier. The kinds' own tests (datasets, bundles, profiles, recommendations) exercise it
through their writers; these pin the rules themselves."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from raylrec import artifacts
from raylrec.artifacts import (
    ArtifactDir,
    ArtifactDirError,
    ArtifactKind,
    DamagedArtifactError,
    IncompleteArtifactError,
)

TOY = ArtifactKind("toy store", "raylrec.toy/1", layout=("parts", "extra_*"), owner="_RAYLREC_TOY",
                   files=("parts/*.bin",))  # fmt: skip
OWNERLESS = ArtifactKind("toy bundle", "raylrec.toyb/1", layout=("weights.bin",), manifest="config.json")


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _committed(root: Path) -> tuple[ArtifactDir, dict]:
    store = ArtifactDir(str(root), TOY)
    store.claim()
    entries = [store.write_file(f"parts/{i}.bin", bytes([i]) * (i + 1), rows=i) for i in range(3)]
    return store, store.commit({"files": entries, "note": "three parts"})


def test_a_committed_directory_reads_back_what_was_staged(tmp_path):
    store, manifest = _committed(tmp_path / "s")
    assert store.read() == manifest and manifest["format"] == "raylrec.toy/1"
    assert [store.read_file(e) for e in store.entries(manifest)] == [b"\x00", b"\x01\x01", b"\x02\x02\x02"]
    assert store.verify() == manifest


def test_until_the_manifest_is_written_nothing_is_committed(tmp_path):
    store = ArtifactDir(str(tmp_path / "s"), TOY)
    store.claim()
    store.write_file("parts/0.bin", b"x")
    assert store.manifest() is None
    with pytest.raises(IncompleteArtifactError, match=r"holds no committed toy store \(no _manifest.json"):
        store.read()
    store.commit({"files": []})
    assert store.uncommit() and store.manifest() is None  # uncommitted first when replaced


def test_claim_refuses_what_raylrec_did_not_write_and_touches_nothing(tmp_path):
    users = tmp_path / "users"
    users.mkdir()
    (users / "thesis.txt").write_text("precious")
    with pytest.raises(ArtifactDirError, match=r"raylrec did not write it .*'thesis.txt'"):
        ArtifactDir(str(users), TOY).claim()

    owned, _ = _committed(tmp_path / "owned")
    (tmp_path / "owned" / "notes.md").write_text("mine")
    with pytest.raises(ArtifactDirError, match=r"'notes.md'.*nothing was deleted"):
        owned.claim()

    other = tmp_path / "other"
    other.mkdir()
    (other / "_manifest.json").write_text(json.dumps({"format": "someone-else/2"}))
    with pytest.raises(ArtifactDirError, match="raylrec did not write for a toy store"):
        ArtifactDir(str(other), TOY).claim()

    a_file = tmp_path / "file.bin"
    a_file.write_bytes(b"x")
    with pytest.raises(ArtifactDirError, match="is a file"):
        ArtifactDir(str(a_file), TOY).claim()
    assert (users / "thesis.txt").read_text() == "precious" and (other / "_manifest.json").exists()
    assert (tmp_path / "owned" / "notes.md").exists() and a_file.read_bytes() == b"x"


def test_a_committed_directory_is_replaced_only_when_asked(tmp_path):
    store, _ = _committed(tmp_path / "s")
    with pytest.raises(ArtifactDirError, match="already holds a toy store.*; pass replace"):
        store.claim(replace=False, replace_hint="pass replace")
    entries = store.claim(replace=True)
    store.uncommit()
    store.clear(entries)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["_RAYLREC_TOY"]  # the owner stays


def test_a_kind_without_an_owner_file_accepts_its_own_layout_only(tmp_path):
    interrupted = tmp_path / "b"
    interrupted.mkdir()
    (interrupted / "weights.bin").write_bytes(b"half")  # an export that died before config.json
    ArtifactDir(str(interrupted), OWNERLESS).claim()
    (interrupted / "meta.json").write_text("{}")
    with pytest.raises(ArtifactDirError, match="'meta.json'"):
        ArtifactDir(str(interrupted), OWNERLESS).claim()


def test_nested_artefacts_of_the_layout_are_not_foreign(tmp_path):
    store, _ = _committed(tmp_path / "s")
    (tmp_path / "s" / "extra_text").mkdir()
    (tmp_path / "s" / "extra_text" / "x").write_text("another artefact's")
    store.claim()


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        ("absolute", "lies outside this toy store's files"),
        ("dotdot", "lies outside this toy store's files"),
        ("other folder", "lies outside this toy store's files"),
        ("twice", "more than once"),
        ("resized", r"holds 1 bytes, its manifest says 2"),
        ("rehashed", "does not match its recorded checksum"),
        ("missing", "is incomplete: parts/0.bin is missing"),
        ("no digest", "lacks path, bytes or sha256"),
        ("link", "outside"),
    ],
)
def test_readers_refuse_a_manifest_or_file_that_is_not_what_was_committed(tmp_path, tamper, message):
    root = tmp_path / "s"
    store, manifest = _committed(root)
    first = manifest["files"][0]
    outside = tmp_path / "elsewhere.bin"
    outside.write_bytes(b"\x00")
    files = {
        "absolute": [{**first, "path": str(outside)}],
        "dotdot": [{**first, "path": "parts/../../elsewhere.bin"}],
        "other folder": [{**first, "path": "elsewhere/0.bin"}],
        "twice": [first, first],
        "resized": [{**first, "bytes": 2}],
        "rehashed": [{**first, "sha256": "0" * 64}],
        "missing": [first],
        "no digest": [{"path": first["path"]}],
        "link": [first],
    }[tamper]
    if tamper == "missing":
        (root / "parts" / "0.bin").unlink()
    if tamper == "link":
        (root / "parts" / "0.bin").unlink()
        (root / "parts" / "0.bin").symlink_to(outside)
    (root / "_manifest.json").write_text(json.dumps({**manifest, "files": files}))
    reread = store.read()
    with pytest.raises(OSError, match=message):
        for entry in store.entries(reread):
            store.read_file(entry)
    with pytest.raises(OSError, match=message):
        store.verify()


def test_a_manifest_too_large_to_be_one_is_refused_before_it_is_parsed(tmp_path, monkeypatch):
    store, manifest = _committed(tmp_path / "s")
    (tmp_path / "s" / "_manifest.json").write_text(json.dumps({**manifest, "padding": "x" * 5_000}))
    monkeypatch.setattr(artifacts, "MAX_MANIFEST_BYTES", 4_096)
    with pytest.raises(DamagedArtifactError, match="more than a manifest holds"):
        store.read()


def test_the_protocol_lives_in_one_module():
    """The manifest name is spelled once, and no other module writes a commit file of its own:
    every kind goes through ``ArtifactDir``."""
    package = Path(artifacts.__file__).parent
    sources = {p: p.read_text() for p in package.rglob("*.py")}
    spelled = [p.name for p, text in sources.items() if '"_manifest.json"' in text]
    assert spelled == ["artifacts.py"]
    kinds = [
        p.relative_to(package).as_posix()
        for p, text in sources.items()
        if re.search(r"\bArtifactKind\(|\bbundle_kind\(", text) and p.name != "artifacts.py"
    ]
    assert sorted(kinds) == [
        "bundle_dir.py",
        "cf/bundle.py",
        "data/output.py",
        "methods/bundle.py",
        "profiles/embed.py",
        "profiles/store.py",
    ]
