"""How a session process of ``tace-response web`` is set up by its launcher, and what it lets out.

* **Settings on standard input.** The launcher writes one JSON line to the session's standard input
  (its folder, its key, the upload and decoding limits) and closes it; nothing of it is on the
  command line, which any local user can read in ``/proc/<pid>/cmdline`` (and which an earlier
  file-read hole turned into other users' folders). The session puts them into its own argument
  list in memory only.
* **Reading rules.** Images are decoded under the limits per image and per session
  (:meth:`~.uploads.UploadLimits.reading_rules`); uploads only as self-contained files.
* **Nothing of the server in the page.** wslink answers a failing call with the Python traceback
  and exception; the session sends the error code and message only (the traceback stays in the
  log). :func:`client_text` removes the session's folder from messages shown on the page.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

#: the session's argument telling it to read its settings from standard input
SETTINGS_FLAG = "--settings-from-stdin"
#: what a session process prints when its server listens (``… port=N``) and when its prediction worker is warm
READY_PREFIX = "TACE_WEB_SESSION_READY"
WARM_PREFIX = "TACE_WEB_SESSION_WARM"


def settings_line(folder: Path, key: str, limits, logout: bool = False) -> str:
    """What the launcher writes to a new session's standard input (``logout``: users log in, so the page
    offers a log-out)."""
    return json.dumps({"session_dir": str(folder), "key": key, "logout": logout, "upload_limits": {
        "max_file_bytes": limits.max_file_bytes, "max_session_bytes": limits.max_session_bytes,
        "max_files": limits.max_files, "max_image_voxels": limits.max_image_voxels,
        "max_image_bytes": limits.max_image_bytes, "max_decoded_bytes": limits.max_decoded_bytes}}) + "\n"


def prepare_session_process(argv: list[str] | None = None, stdin=None) -> None:
    """Before the session's trame app is made: its settings from standard input (when the launcher
    started it), the web's reading rules, no tracebacks to the page."""
    from TACEResponseLib.frontend.web.uploads import UploadLimits
    from TACEResponseLib.imaging.image_headers import set_default_rules

    argv = sys.argv if argv is None else argv
    limits = UploadLimits()
    if SETTINGS_FLAG in argv:
        argv.remove(SETTINGS_FLAG)
        settings = json.loads((stdin or sys.stdin).readline() or "{}")
        limits = UploadLimits(**settings.get("upload_limits", {}))
        # "--name=value": a key may begin with "-"
        argv += [f"--session-dir={settings['session_dir']}", f"--authKey={settings['key']}",
                 f"--upload-limits={json.dumps(limits.to_client())}"]
        if settings.get("logout"):
            argv.append("--logout-link")
    set_default_rules(limits.reading_rules())
    hide_tracebacks()


def hide_tracebacks() -> None:
    """wslink sends a failing call's traceback and exception to the client: keep them in the log."""
    from wslink import protocol

    handler = protocol.WslinkHandler
    if getattr(handler.sendWrappedError, "_tace_hidden", False):
        return
    original = handler.sendWrappedError

    async def send_wrapped_error(self, rpcid, code, message, data=None, client_id=None):
        if isinstance(data, dict) and ("trace" in data or "exception" in data):
            data = {k: v for k, v in data.items() if k not in ("trace", "exception")}
        return await original(self, rpcid, code, message, data, client_id=client_id)

    send_wrapped_error._tace_hidden = True  # type: ignore[attr-defined]
    handler.sendWrappedError = send_wrapped_error


#: an absolute path in a message (at least one folder): "/tmp/x/ct.nrrd", "/etc/passwd"
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~])/(?:[\w.@+~-]+/)+[\w.@+~-]*")


def client_text(message: str, folder: str | Path) -> str:
    """``message`` as the page may show it: paths in the session's folder relative to it, any other
    absolute path reduced to its file name."""
    text = str(message)
    folder = Path(folder)
    for form in sorted({str(folder), str(folder.resolve()), os.path.realpath(folder)}, key=len, reverse=True):
        text = text.replace(form + os.sep, "").replace(form, "the session")
    return _ABSOLUTE_PATH.sub(lambda match: Path(match.group(0)).name or "the server", text)
