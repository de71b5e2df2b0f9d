"""README and the user guide (docs/, MkDocs): short README, every picture and relative link there,
every command shown a real one (its --help runs, in-process through the CLI's main()), every option
shown one it takes, every page in the navigation, and the guide builds with --strict."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
SPAN = re.compile(r"`(tace-response [^`]+)`")


def _without_code(text: str) -> str:
    return re.sub(r"```.*?```", "", text, flags=re.S)


def test_the_readme_is_short_and_points_to_the_guide():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    for must in ("Research use only", "make demo", "make test", "docs/index.md", "![", "docs/command-line.md"):
        assert must in text, must


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(REPO).as_posix() for p in PAGES])
def test_every_picture_and_relative_link_exists(page):
    missing = []
    for target in LINK.findall(_without_code(page.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve()
        if not resolved.exists():
            missing.append(target)
        elif anchor and resolved.suffix == ".md":
            headings = [re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
                        for h in re.findall(r"^#+ (.+)$", _without_code(resolved.read_text(encoding="utf-8")), re.M)]
            if anchor not in headings:
                missing.append(target)
    assert not missing, f"{page.name}: {missing}"


def shown_commands(text: str) -> list[str]:
    """Every ``tace-response …`` command line in a page: in code blocks (``\\`` continuations joined,
    ``.venv/bin/`` allowed) and in inline code."""
    commands = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            found = re.match(r"^\s*(?:\$\s*)?(?:\S*/)?(tace-response\s.*)$", line.split("  #")[0].split(" # ")[0])
            if found:
                commands.append(found.group(1).strip())
    commands += [c.strip() for c in SPAN.findall(_without_code(text)) if "<TAB>" not in c]  # keystrokes, not commands
    return commands


def _check_command(line: str, row: str) -> str | None:
    """None when ``line`` names real commands and only options they take; else what is wrong."""
    from TACEResponseLib.cli import build_parser, main, renamed

    words = shlex.split(line.replace("...", "").replace("…", ""))[1:]
    argv, note = renamed(words)
    if note and f"tace-response {' '.join(argv[:2])}" not in row:  # only beside its new name (the table of old names)
        return f"{line}: an old name ({note})"
    parser, path = build_parser(), []
    while True:  # down the sub-commands as far as the words name them
        sub = next((a for a in parser._actions if hasattr(a, "add_parser")), None)
        if sub is None or not argv[len(path):] or argv[len(path)] not in sub.choices:
            break
        parser = sub.choices[argv[len(path)]]
        path.append(argv[len(path)])
    if argv[len(path):] and argv[len(path)].isupper():  # a placeholder: tace-response GROUP --help
        argv = argv[:len(path)]
    if not path and any(not w.startswith("-") for w in argv):
        return f"{line}: no such command"
    if main([*path, "--help"]) != 0:
        return f"{line}: --help fails"
    known = {option for action in parser._actions for option in action.option_strings}
    unknown = [w.split("=")[0] for w in argv[len(path):] if w.startswith("--") and w.split("=")[0] not in known]
    return f"{line}: {unknown} not options of tace-response {' '.join(path)}" if unknown else None


def test_every_command_shown_is_a_real_command(capsys):
    problems, checked = [], 0
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        rows = {line for line in text.splitlines()}
        for line in shown_commands(text):
            row = next((r for r in rows if f"`{line}`" in r), line)  # the row of an inline command
            problem = _check_command(line, row)
            checked += 1
            if problem:
                problems.append(f"{page.name}: {problem}")
    capsys.readouterr()
    assert checked >= 30 and not problems, "\n".join(problems)


def test_the_checks_catch_what_they_should(capsys):
    """The command check refuses a made-up command, an option a command lacks and an old name."""
    assert _check_command("tace-response survival fit-nomogram --signature s --n-boot 5", "") is None
    assert "no such command" in _check_command("tace-response predicts --image x", "")
    assert "--frobnicate" in _check_command("tace-response demo run --frobnicate", "")
    assert "old name" in _check_command("tace-response fit-signature --features f.csv", "")
    old_row = "| `tace-response fit-signature` | `tace-response survival fit-signature` |"
    assert _check_command("tace-response fit-signature", old_row) is None  # the table of old names
    capsys.readouterr()


def test_every_make_target_shown_exists():
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([a-z][\w-]*):", makefile, re.M))
    shown = {t for page in PAGES for t in re.findall(r"`make ([a-z][\w-]*)", page.read_text(encoding="utf-8"))}
    assert shown and not shown - targets, shown - targets


def test_every_page_is_in_the_navigation():
    import yaml

    config = yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8"))

    def pages(entries):
        for entry in entries:
            for value in (entry.values() if isinstance(entry, dict) else [entry]):
                yield from (pages(value) if isinstance(value, list) else [value])

    nav = list(pages(config["nav"]))
    on_disk = sorted(p.name for p in (REPO / "docs").glob("*.md"))
    assert sorted(nav) == on_disk, "add each docs/*.md page to nav in mkdocs.yml (and nothing else)"


def test_the_guide_builds_without_warnings(tmp_path):
    mkdocs = Path(sys.executable).parent / "mkdocs"
    if not mkdocs.exists() and not shutil.which("mkdocs"):
        pytest.skip("mkdocs is not installed (make bootstrap installs it)")
    run = subprocess.run([str(mkdocs if mkdocs.exists() else "mkdocs"), "build", "--strict", "--site-dir",
                          str(tmp_path / "site")], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert "WARNING" not in run.stderr, run.stderr[-3000:]
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "screenshots" / "demo_overlay.png").is_file()  # pictures come along
