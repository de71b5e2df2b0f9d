"""The command-line tool as a user runs it: outputs, progress lines, clear errors."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from TACEResponseLib.imaging.geometry import grid_offset
from TACEResponseLib.imaging.volume_io import read_volume
from TACEResponseLib.imaging.phantoms import make_phantom

REPO = Path(__file__).resolve().parents[1]


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "TACEResponseLib.cli", *args], capture_output=True, text=True, encoding="utf-8",
                          timeout=timeout, cwd=REPO)


def test_predict_writes_result_heatmap_and_progress(random_bundle, tmp_path):
    case = make_phantom("SD", shape_kji=(40, 80, 80), seed=6, rotation_deg=(0, 0, 15))
    paths = case.write(tmp_path / "case")
    out = tmp_path / "out"
    run = _cli("predict", "--image", paths["phases"]["arterial"], "--segmentation", paths["segmentation"],
               "--bundle", str(random_bundle.path), "--output", str(out), "--device", "cpu", "--progress", "--png")
    assert run.returncode == 0, run.stderr
    progress = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    stages = [p["stage"] for p in progress]
    assert stages[0] == "reading" and stages[-1] == "done"
    fractions = [p["progress"] for p in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    result = json.loads((out / "result.json").read_text())
    assert result["tumours"][0]["segment_name"] == "Tumour"
    heat = read_volume(out / "heatmap.nrrd")  # uint8 over the box the patches cover, placed on the reference grid
    assert heat.array.dtype == np.uint8 and heat.array.max() == 255
    np.testing.assert_allclose(heat.ijk_to_ras[:3, :3], case.reference.ijk_to_ras[:3, :3], atol=1e-12)
    lo = np.array(result["heatmap_box_kji"][0])
    assert grid_offset(heat, case.reference).tolist() == lo.tolist()
    np.testing.assert_allclose(heat.ijk_to_ras[:3, 3], case.reference.ijk_to_ras_points(lo[::-1][None])[0], atol=1e-9)
    assert result["backend"]["name"] in ("onnxruntime", "openvino", "torch") and result["backend"]["version"]
    assert (out / "overlay.png").stat().st_size > 10_000


def test_user_errors_are_one_line_and_exit_2(random_bundle, tmp_path):
    run = _cli("predict", "--image", str(tmp_path / "missing.nrrd"), "--segmentation", str(tmp_path / "x.seg.nrrd"),
               "--bundle", str(random_bundle.path), "--output", str(tmp_path / "o"))
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'missing.nrrd'}: file or folder does not exist")
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "o" / "result.json").exists()
    (tmp_path / "x.nrrd").write_text("inputs are checked to exist first; the bundle is checked next")
    run = _cli("predict", "--image", str(tmp_path / "x.nrrd"), "--segmentation", str(tmp_path / "x.nrrd"),
               "--bundle", str(tmp_path), "--output", str(tmp_path / "o"))
    assert run.returncode == 2 and "not a model bundle" in run.stderr


# --- the command line grouped by task --------------------------------------------------------------
def _help_of(capsys, *words: str) -> str:
    from TACEResponseLib.cli import main

    assert main([*words, "--help"]) == 0
    return capsys.readouterr().out


def _listed(text: str, heading: str) -> list[tuple[str, str]]:
    """The ``name  help`` lines under ``heading:`` of a help text, up to the next blank line."""
    lines = text.split(f"\n{heading}:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    return [tuple(line.strip().split(None, 1)) for line in lines]


def test_help_lists_commands_and_groups_under_task_headings(capsys):
    from TACEResponseLib.cli import COMMANDS, GROUPS, TASKS

    text = _help_of(capsys)
    listed = {}
    for task, heading in TASKS.items():
        if f"\n{heading}:\n" in text:
            listed.update(dict(_listed(text, heading)))
    top = {c.name for c in COMMANDS if not c.group and not c.hidden} | {g.name for g in GROUPS}
    assert set(listed) == top
    assert {"predict", "batch", "train", "evaluate", "web", "survival", "demo"} <= set(listed)
    assert "worker" not in listed and "fit-signature" not in listed  # internal; inside its group
    assert listed["survival"].split(": ", 1)[1].split(", ") == [c.name for c in COMMANDS if c.group == "survival"]
    assert _listed(text, "cases")[0][0] == "predict" and _listed(text, "survival") == [("survival", listed["survival"])]


def test_each_group_help_lists_its_commands_one_line_each(capsys):
    from TACEResponseLib.cli import COMMANDS, GROUPS

    for group in GROUPS:
        rows = _listed(_help_of(capsys, group.name), "commands")
        assert rows == [(c.name, c.help) for c in COMMANDS if c.group == group.name and not c.hidden]
    survival = [name for name, _ in _listed(_help_of(capsys, "survival"), "commands")]
    assert survival == ["extract-features", "fit-signature", "fit-nomogram", "run", "phantoms"]
    demo = [name for name, _ in _listed(_help_of(capsys, "demo"), "commands")]
    assert demo == ["run", "phantoms", "bundle", "survival-model"]
    for name in (*survival, *demo):
        assert "--output" in _help_of(capsys, "survival" if name in survival else "demo", name)
    assert "--idle-timeout" in _help_of(capsys, "worker")  # hidden, still there for the Slicer module


def test_old_flat_names_still_run_with_one_deprecation_line(capsys, tmp_path):
    from TACEResponseLib.cli import COMMANDS, main

    old_names = {c.replaces: c for c in COMMANDS if c.replaces}
    assert set(old_names) == {"demo", "phantoms", "make-demo-bundle", "extract-features", "survival", "fit-signature",
                              "fit-nomogram", "survival-cohort", "make-demo-survival-model"}
    for old, command in old_names.items():
        assert main([old, "--frobnicate"]) == 2
        err = capsys.readouterr().err.splitlines()
        new = f"tace-response {command.group} {command.name}"
        assert err[0] == f"deprecated: 'tace-response {old}' is now '{new}'; the old name goes in the next release"
        assert len(err) == 2 and err[1].startswith(f"error: {new}: ") and err[1].endswith(f"(see {new} --help)")
    # the old name runs the same command: the same answer, one deprecation line more
    missing = str(tmp_path / "no signature")
    assert main(["-v", "fit-nomogram", "--signature", missing]) == 2
    old = capsys.readouterr().err.splitlines()
    assert main(["-v", "survival", "fit-nomogram", "--signature", missing]) == 2
    new = capsys.readouterr().err.splitlines()
    assert old[0].startswith("deprecated: ") and old[1:] == new and len(new) == 1 and missing in new[0]


def test_a_group_word_followed_by_its_command_is_not_the_old_command(capsys):
    from TACEResponseLib.cli import renamed

    assert renamed(["survival", "run", "--output", "x"]) == (["survival", "run", "--output", "x"], None)
    assert renamed(["demo", "--help"]) == (["demo", "--help"], None)
    assert renamed(["demo", "--output", "x"])[0] == ["demo", "run", "--output", "x"]
    assert renamed(["survival", "--manifest", "m.csv"])[0] == ["survival", "run", "--manifest", "m.csv"]
    assert renamed(["-v", "survival-cohort"])[0] == ["-v", "survival", "phantoms"]
    assert renamed(["predict", "--image", "demo"]) == (["predict", "--image", "demo"], None)
    assert "\n  survival-model  " in _help_of(capsys, "demo")  # the group, not the old demo command


def test_the_makefile_and_the_slicer_module_use_the_new_names():
    import re
    import shlex

    from TACEResponseLib.cli import build_parser, renamed
    from TACEResponseLib.frontend.process import worker_command

    lines = [line.split("tace-response ", 1)[1] for line in (REPO / "Makefile").read_text().splitlines()
             if line.startswith("\t") and "/tace-response " in line]
    assert len(lines) >= 4
    for line in lines + [" ".join(worker_command(python="python")[3:])]:
        argv = shlex.split(re.sub(r"\$\(\w+\)", "x", line))
        assert renamed(argv)[1] is None, line
        build_parser().parse_args(argv)  # every option exists


def test_shell_completion_comes_from_the_parser(tmp_path):
    """bash completes the groups and their commands through argcomplete, as a user's shell would."""
    import shutil

    bin_dir = Path(sys.executable).parent
    script, register = bin_dir / "tace-response", bin_dir / "register-python-argcomplete"
    if not (shutil.which("bash") and script.exists() and register.exists()):
        import pytest

        pytest.skip("needs bash and the installed tace-response script (make bootstrap)")
    probe = tmp_path / "complete.sh"
    probe.write_text('eval "$(register-python-argcomplete tace-response)"\n'
                     'for line in "$@"; do COMP_LINE="$line"; COMP_POINT=${#line}; read -ra COMP_WORDS <<< "$line"\n'
                     '  COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 )); [[ "$line" == *" " ]] && COMP_CWORD=${#COMP_WORDS[@]}\n'
                     '  COMPREPLY=(); _python_argcomplete tace-response; echo "${COMPREPLY[*]}"; done\n')
    env = {**__import__("os").environ, "PATH": f"{bin_dir}:{__import__('os').environ.get('PATH', '')}"}
    run = subprocess.run(["bash", str(probe), "tace-response ", "tace-response survival f",
                          "tace-response demo run --se"], capture_output=True, text=True, env=env, timeout=120)
    top, survival, option = [line.split() for line in run.stdout.splitlines()]
    assert {"predict", "batch", "survival", "demo", "web"} <= set(top) and "worker" not in top
    assert survival == ["fit-signature", "fit-nomogram"]
    assert option == ["--seed"]


# --- counts: 0 refused, or said what it means -----------------------------------------------------
def _command_parsers():
    """``(prog, parser)`` of every command, the groups' included."""
    from TACEResponseLib.cli import build_parser

    found = []

    def walk(parser):
        for action in parser._actions:
            for sub in (getattr(action, "choices", None) or {}).values() if hasattr(action, "add_parser") else ():
                if any(hasattr(a, "add_parser") for a in sub._actions):
                    walk(sub)
                else:
                    found.append((sub.prog, sub))

    walk(build_parser())
    return found


def test_every_count_option_refuses_0_or_says_what_0_means():
    from TACEResponseLib.cli.common import SEED, zero_meaning

    parsers = _command_parsers()
    assert len(parsers) >= 16
    checked, zero_ok = 0, {}
    for prog, parser in parsers:
        for action in parser._actions:
            option = f"{prog} {'/'.join(action.option_strings)}"
            assert action.type not in (int, float), f"{option}: use common.number() (range checked, 0 said)"
            if getattr(action.type, "__name__", "") != "int" or action.type is SEED:  # a seed is no count
                continue
            checked += 1
            try:
                action.type("0")
            except argparse.ArgumentTypeError as exc:
                assert "≥" in str(exc) or ">" in str(exc), option  # the message gives the range
                continue
            meaning = zero_meaning(action)
            assert meaning, f"{option} takes 0 without saying what it means"
            assert f"0: {meaning}" in action.help, option
            zero_ok[option] = meaning
    assert checked >= 30
    assert any(o.endswith("batch --workers") for o in zero_ok) and any(o.endswith("--n-boot") for o in zero_ok)
    refused = {"predict": "--tta", "batch": "--threads", "train": "--folds", "evaluate": "--bootstrap",
               "web": "--max-sessions"}
    for name, option in refused.items():
        assert f"tace-response {name} {option}" not in zero_ok


def test_a_count_of_0_is_said_when_given(caplog, tmp_path):
    import logging

    from TACEResponseLib.cli import main

    caplog.set_level(logging.INFO)
    assert main(["batch", "--manifest", str(tmp_path / "missing.csv"), "--output", str(tmp_path / "out"),
                 "--workers", "0"]) == 2
    assert "--workers 0: one case after another in this process, no cluster" in caplog.messages
    caplog.clear()
    assert main(["batch", "--manifest", str(tmp_path / "missing.csv"), "--output", str(tmp_path / "out"),
                 "--workers", "2"]) == 2
    assert not [m for m in caplog.messages if " 0: " in m]
