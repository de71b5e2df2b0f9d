"""core.files.atomic_folder: a command's output folder written as one group, or not at all."""

from __future__ import annotations

import os

import pytest

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.files import PARTIAL, atomic_folder, relocated


def _tree(folder):
    return {p.relative_to(folder).as_posix(): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_new_folder_appears_whole_and_a_failure_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_folder(out) as staging:
            (staging / "split.csv").write_text("half")
            assert not out.exists()
            raise RuntimeError("the feature table has a NaN")
    assert sorted(os.listdir(tmp_path)) == []  # neither the folder nor its staging folder
    with atomic_folder(out) as staging:
        (staging / "sub").mkdir()
        (staging / "sub" / "a.txt").write_text("a")
        (staging / "b.txt").write_text("b")
        assert staging.parent == tmp_path and staging.name.startswith(f".out{PARTIAL}")
    assert _tree(out) == {"b.txt": "b", "sub/a.txt": "a"} and sorted(os.listdir(tmp_path)) == ["out"]
    assert relocated(staging / "sub" / "a.txt", staging, out) == out / "sub" / "a.txt"
    assert relocated(tmp_path / "elsewhere", staging, out) == tmp_path / "elsewhere"


def test_an_existing_folder_keeps_its_other_files_and_stays_as_it_was_on_failure(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "result.json").write_text("previous")
    (out / "notes.txt").write_text("the user's own")
    before = _tree(out)
    with pytest.raises(ValueError):
        with atomic_folder(out) as staging:
            (staging / "result.json").write_text("new but unfinished")
            raise ValueError("malformed nomogram")
    assert _tree(out) == before and sorted(os.listdir(tmp_path)) == ["out"]
    moved = []
    real_replace = os.replace

    def watch(source, target):
        moved.append(os.path.basename(target))
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", watch)
    with atomic_folder(out, last=["result.json"]) as staging:
        for name in ("result.json", "heatmap.nrrd", "overlay.png"):
            (staging / name).write_text(f"new {name}")
    monkeypatch.undo()
    assert moved[-1] == "result.json"  # the file whose presence means "complete" lands last
    assert _tree(out) == {"heatmap.nrrd": "new heatmap.nrrd", "notes.txt": "the user's own",
                          "overlay.png": "new overlay.png", "result.json": "new result.json"}


def test_a_file_where_the_output_has_a_folder_is_refused_before_anything_moves(tmp_path):
    out = tmp_path / "out"
    (out / "case").mkdir(parents=True)
    (out / "kept.txt").write_text("old")
    with pytest.raises(InputError, match="case"):
        with atomic_folder(out) as staging:
            (staging / "kept.txt").write_text("new")
            (staging / "case").write_text("a file now")
    assert _tree(out) == {"kept.txt": "old"} and (out / "case").is_dir()
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_commands_that_write_a_folder_leave_no_trace_of_the_staging_folder(tmp_path, capsys):
    """The phantom cohorts and the patches are written through atomic_folder; what they record and print names
    the final folder."""
    from TACEResponseLib.cli import main

    cohort, survival, patches = tmp_path / "cohort", tmp_path / "survival", tmp_path / "patches"
    assert main(["demo", "phantoms", "--cases", "1", "--shape", "24", "48", "48", "--output", str(cohort)]) == 0
    assert main(["survival", "phantoms", "--cases", "2", "--shape", "24", "32", "32", "--output", str(survival)]) == 0
    assert main(["patches", "--image", str(cohort / "case0000_arterial.nrrd"), "--segmentation",
                 str(cohort / "case0000_tumour.seg.nrrd"), "--output", str(patches)]) == 0
    printed = capsys.readouterr().out
    assert f"manifest: {cohort / 'manifest.csv'}" in printed and f"→ {survival / 'survival_cohort.csv'}" in printed
    assert PARTIAL not in printed
    written = [p for folder in (cohort, survival, patches) for p in folder.rglob("*") if p.is_file()]
    assert len(written) > 10 and (patches / "patches.json").is_file()
    assert not [p for p in written if PARTIAL.encode() in p.read_bytes()]
    assert sorted(os.listdir(tmp_path)) == ["cohort", "patches", "survival"]
