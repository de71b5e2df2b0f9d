# PYTHON_ARGCOMPLETE_OK (shell completion: argcomplete answers from build_parser)
"""Floor 8 — ``tace-response``: the command-line tool (the only place that parses arguments).

May import every computation package (``core`` … ``demo``), never ``frontend``: the Slicer module
starts this tool as a separate process (``python -m TACEResponseLib.cli``). One exception: the
``web`` command imports the web layer (``frontend.web``) inside its function, when it runs.

The commands are grouped by task: cases (``predict``, ``batch``), response models (``train``,
``evaluate``), ``survival …`` (the Zhang 2020 steps), ``demo …``, ``web``. :data:`COMMANDS` and
:data:`GROUPS` say which is where, so a new group is one :class:`~.common.Group` entry and its
commands naming it. The old flat names (``fit-signature``, ``make-demo-bundle`` …) still run, for one
release, after one deprecation line. Shell completion comes from the same parser (argcomplete:
``eval "$(register-python-argcomplete tace-response)"``).

Sub-commands map one-to-one onto library functions, so the GUI, the batch runner and
Slicer's ``--python-script`` mode all run the same code. User errors
(:class:`~TACEResponseLib.core.errors.TACEResponseError`) are printed as one clear line and give
exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

from TACEResponseLib.cli import (
    assess_commands,
    case_commands,
    cohort_commands,
    pacs_commands,
    survival_commands,
    training_commands,
    web_command,
    worker,
)
from TACEResponseLib.cli.common import (
    UNTRUSTING_COMMANDS,
    ArgumentParser,
    Command,
    Group,
    UsageError,
    say_what_zero_means,
    trust_argument,
    zero_meanings,
)
from TACEResponseLib.core.errors import TACEResponseError
from TACEResponseLib.imaging.image_headers import trusted_data_files

logger = logging.getLogger("tace-response")

#: every sub-command (top-level ones and those of the groups), in the order ``--help`` lists them
COMMANDS: list[Command] = [*case_commands.COMMANDS, *training_commands.COMMANDS, *survival_commands.COMMANDS,
                           *cohort_commands.COMMANDS, *web_command.COMMANDS, *worker.COMMANDS,
                           *assess_commands.COMMANDS, *pacs_commands.COMMANDS]

#: the command groups: ``tace-response GROUP COMMAND``; a command joins one by naming it as its ``group``
GROUPS: list[Group] = [
    Group("survival", "Zhang 2020 overall survival", task="survival"),
    Group("cohort", "public TACE collections, and response labels from visits", task="cohorts"),
    Group("demo", "the SYNTHETIC demo and its builders", task="demo"),
    Group("pacs", "DICOM results to and from a PACS", task="pacs"),
]

#: the headings of ``tace-response --help``, in order: a command's or group's ``task`` → heading (a
#: heading with nothing under it is not shown)
TASKS: dict[str, str] = {
    "cases": "cases",
    "models": "response models",
    "survival": "survival",
    "cohorts": "cohorts",
    "pacs": "PACS",
    "demo": "demo",
    "web": "browser",
}

PROG = "tace-response"


def _table(rows: list[tuple[str, str]], width: int = 0) -> str:
    """``name  help`` lines, the help aligned in one column (at least ``width`` characters in)."""
    width = max([width - 2, *(len(name) for name, _ in rows)]) + 2
    return "\n".join(f"  {name.ljust(width)}{text}" for name, text in rows)


def _group_commands(group: str) -> list[Command]:
    return [c for c in COMMANDS if c.group == group]


def _overview() -> str:
    """The task headings of ``tace-response --help``, each listing its commands and groups one line each."""
    undeclared = ({c.group for c in COMMANDS if c.group} - {g.name for g in GROUPS}) | (
        {g.task for g in GROUPS} | {c.task for c in COMMANDS if not c.group and not c.hidden}) - set(TASKS)
    if undeclared:  # a programming error: every command is listed somewhere
        raise RuntimeError(f"commands name a group or task that is not declared: {sorted(undeclared)}")
    by_task = {task: [(c.name, c.help) for c in COMMANDS if not c.group and not c.hidden and c.task == task]
               + [(g.name, f"{g.help}: {', '.join(c.name for c in _group_commands(g.name) if not c.hidden)}")
                  for g in GROUPS if g.task == task] for task in TASKS}
    width = max(len(name) for rows in by_task.values() for name, _ in rows) + 2
    sections = [f"{TASKS[task]}:\n{_table(rows, width)}" for task, rows in by_task.items() if rows]
    return ("\n\n".join(sections) + f"\n\n'{PROG} COMMAND --help' shows a command's options, '{PROG} GROUP --help' "
            "a group's commands.")


def _add_command(sub, command: Command, prog_words: str) -> None:
    p = sub.add_parser(command.name, description=command.help, prog=f"{PROG} {prog_words}")
    command.add_arguments(p)
    if command.name not in UNTRUSTING_COMMANDS:
        trust_argument(p)
    say_what_zero_means(p)
    p.set_defaults(func=command.run, command=prog_words, command_parser=p)


def build_parser(completion: bool = False) -> argparse.ArgumentParser:
    """The argument parser of ``tace-response``: the top-level commands and one sub-parser per group with
    its commands (``completion``: without the hidden ones, for shell completion)."""
    parser = ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_overview(),
        description="Liver tumour response to TACE/HAIC and survival from pre-treatment CT/MRI. Research use only.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.set_defaults(tool=main)  # what runs a command line: the worker runs its requests with it
    sub = parser.add_subparsers(dest="command_word", required=True, metavar="COMMAND",
                                help="a command or a command group, from the list below")
    for command in COMMANDS:
        if not command.group and not (completion and command.hidden):
            _add_command(sub, command, command.name)
    for group in GROUPS:
        members = [c for c in _group_commands(group.name) if not (completion and c.hidden)]
        g = sub.add_parser(group.name, description=group.help, prog=f"{PROG} {group.name}",
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog="commands:\n" + _table([(c.name, c.help) for c in members if not c.hidden]))
        inner = g.add_subparsers(dest="group_command", required=True, metavar="COMMAND",
                                 help="one of the commands below")
        for command in members:
            _add_command(inner, command, f"{group.name} {command.name}")
    return parser


def renamed(argv: Sequence[str]) -> tuple[list[str], str | None]:
    """``argv`` with an old flat command name (``fit-signature``) put as its group and new name
    (``survival fit-signature``), and the deprecation line to show; ``argv`` as it is otherwise.

    Where the old name is now a group's word (``survival``, ``demo``), it is the old command only when
    no command of the group (nor ``-h``/``--help``) follows it."""
    argv = list(argv)
    position = next((n for n, token in enumerate(argv) if not token.startswith("-")), None)
    if position is None:
        return argv, None
    old = {c.replaces: c for c in COMMANDS if c.replaces and (c.group or c.name != c.replaces)}.get(argv[position])
    if old is None:
        return argv, None
    if argv[position] in {g.name for g in GROUPS}:
        following = argv[position + 1] if position + 1 < len(argv) else None
        if following in {c.name for c in _group_commands(argv[position])} | {"-h", "--help"}:
            return argv, None
    new = [old.group, old.name] if old.group else [old.name]
    note = (f"deprecated: '{PROG} {argv[position]}' is now '{PROG} {' '.join(new)}'; the old name goes in the next "
            "release")
    return argv[:position] + new + argv[position + 1:], note


def one_line(message: str) -> str:
    """A message on one line: its lines joined with "; ", a list's "- " bullets dropped, and the line that
    introduces a list (ending in ":") followed by a space ("table: 2 problem(s): A; B")."""
    text = ""
    for line in message.splitlines():
        line = line.strip()
        line = line[2:].lstrip() if line.startswith("- ") else line
        if line:
            text += line if not text else (" " if text.endswith(":") else "; ") + line
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Run one sub-command; 0 on success, 2 with one ``error: …`` line for a user error."""
    for stream in (sys.stdout, sys.stderr):  # never crash on "→" or "—" in an ASCII-only terminal
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    if "_ARGCOMPLETE" in os.environ:  # the shell asks for completions (argcomplete): answer from the same parser
        import argcomplete

        argcomplete.autocomplete(build_parser(completion=True))
    argv, deprecation = renamed(sys.argv[1:] if argv is None else argv)
    if deprecation:
        print(deprecation, file=sys.stderr)
    try:
        args, extra = build_parser().parse_known_args(argv)
        if extra:  # named after the command they were given to, not after the tool
            raise UsageError(f"{PROG} {args.command}: unrecognized arguments: {' '.join(extra)} "
                             f"(see {PROG} {args.command} --help)")
    except TACEResponseError as exc:
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("numexpr").setLevel(logging.WARNING)  # "NumExpr defaulting to N threads" is noise here
    if not args.verbose:  # Dask's own start-up chatter (read when distributed is imported); its warnings stay
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    for said in zero_meanings(args.command_parser, args):  # a count of 0 is never taken without a word
        logger.info(said)
    try:
        with trusted_data_files(getattr(args, "trust_detached_headers", False)):
            return int(args.func(args) or 0)
    except TACEResponseError as exc:
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith(("TACEResponseLib.training", "TACEResponseLib.demo")):
            raise
        print(f"error: '{args.command}' is not part of this installation (the Slicer extension predicts; training, "
              "evaluation and the demo builders come with the TACEResponse Python package: pip install -e .)",
              file=sys.stderr)
        return 2
