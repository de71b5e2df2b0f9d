"""Floor 8 — ``tace-response``: the command-line tool (the only place that parses arguments).

May import every computation package (``core`` … ``demo``), never ``frontend``: the Slicer module
starts this tool as a separate process (``python -m TACEResponseLib.cli``). One exception: the
``web`` command imports the web layer (``frontend.web``) inside its function, when it runs.

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

from TACEResponseLib.cli import case_commands, survival_commands, training_commands, web_command, worker
from TACEResponseLib.cli.common import UNTRUSTING_COMMANDS, ArgumentParser, Command, trust_argument
from TACEResponseLib.core.errors import TACEResponseError
from TACEResponseLib.imaging.image_headers import trusted_data_files

logger = logging.getLogger("tace-response")

#: every sub-command, in the order ``--help`` lists them
COMMANDS: list[Command] = [*case_commands.COMMANDS, *training_commands.COMMANDS, *survival_commands.COMMANDS,
                           *web_command.COMMANDS, *worker.COMMANDS]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``tace-response`` with one sub-parser per :data:`COMMANDS` entry."""
    parser = ArgumentParser(
        prog="tace-response",
        description="Liver tumour response to TACE/HAIC and survival from pre-treatment CT/MRI. Research use only.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(p)
        if command.name not in UNTRUSTING_COMMANDS:
            trust_argument(p)
        p.set_defaults(func=command.run)
    return parser


def one_line(message: str) -> str:
    """A message on one line (lists of problems joined with "; ")."""
    return "; ".join(part.strip() for part in message.splitlines() if part.strip())


def main(argv: Sequence[str] | None = None) -> int:
    """Run one sub-command; 0 on success, 2 with one ``error: …`` line for a user error."""
    for stream in (sys.stdout, sys.stderr):  # never crash on "→" or "—" in an ASCII-only terminal
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    try:
        args = build_parser().parse_args(argv)
    except TACEResponseError as exc:
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("numexpr").setLevel(logging.WARNING)  # "NumExpr defaulting to N threads" is noise here
    if not args.verbose:  # Dask's own start-up chatter (read when distributed is imported); its warnings stay
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
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
