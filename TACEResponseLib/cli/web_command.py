"""``tace-response web``: the prediction workflow in a browser, on Slicer's views and segment editor.

The web layer (:mod:`TACEResponseLib.frontend.web`) and its packages (trame, trame-slicer,
aiohttp: the ``web`` extra) are imported only when the command runs; without them the command
says what to install.
"""

from __future__ import annotations

import argparse
import getpass
import importlib.util
import logging
import sys
from pathlib import Path

from TACEResponseLib.cli.common import Command, number
from TACEResponseLib.core.errors import InputError, TACEResponseError

logger = logging.getLogger(__name__)

#: import name → PyPI name of what the web page needs beyond the library
WEB_PACKAGES = {"aiohttp": "aiohttp", "trame": "trame", "trame_slicer": "trame-slicer", "slicer": "slicer-core"}


def missing_web_packages() -> list[str]:
    """PyPI names of the web extra's packages that are not installed."""
    return [pypi for module, pypi in WEB_PACKAGES.items() if importlib.util.find_spec(module) is None]


def cmd_web(args: argparse.Namespace) -> int:
    """Serve the page: one session process per browser page, the demo case unless --image is given."""
    missing = missing_web_packages()
    if missing:
        raise TACEResponseError(f"'tace-response web' needs the web extra; missing Python package(s): "
                                f"{', '.join(missing)}. Install it with: pip install 'TACEResponse[web]' "
                                "(or pip install -r requirements.txt)")
    from TACEResponseLib.frontend.web.auth import LoginPolicy, add_user
    from TACEResponseLib.frontend.web.guards import ConnectionLimits
    from TACEResponseLib.frontend.web.launcher import WebOptions, serve
    from TACEResponseLib.frontend.web.uploads import UploadLimits

    if args.add_user:
        if not args.users:
            raise InputError("--add-user needs --users FILE (the file the user is added to)")
        password = getpass.getpass(f"password for {args.add_user}: ") if sys.stdin.isatty() else sys.stdin.readline()
        print(f"user {args.add_user} written to {add_user(args.users, args.add_user, password.rstrip(chr(10)))}")
        return 0
    session = ["--device", args.device]
    for path in [*(args.image or []), *([args.segmentation] if args.segmentation else [])]:
        if not Path(path).exists():
            raise InputError(f"{path}: file or folder does not exist")
    for image in args.image or []:
        session += ["--image", str(Path(image).resolve())]
    if args.segmentation:
        session += ["--segmentation", str(Path(args.segmentation).resolve())]
    if args.no_demo:
        session.append("--no-demo")
    if args.encoder:
        session += ["--encoder", args.encoder]
    megabyte = 1024 * 1024
    limits = UploadLimits(int(args.max_upload_mb * megabyte), int(args.max_session_upload_mb * megabyte),
                          args.max_upload_files, max_image_voxels=int(args.max_image_megavoxels * 1e6),
                          max_image_bytes=int(args.max_image_mb * megabyte),
                          max_decoded_bytes=int(args.max_session_image_mb * megabyte))
    options = WebOptions(host=args.host, port=args.port, users_file=Path(args.users) if args.users else None,
                         session_arguments=session, max_sessions=args.max_sessions,
                         max_sessions_per_user=args.max_sessions_per_user, session_timeout=args.session_timeout,
                         session_lifetime=args.max_session_hours * 3600, limits=limits,
                         tls_cert=Path(args.tls_cert) if args.tls_cert else None,
                         tls_key=Path(args.tls_key) if args.tls_key else None,
                         behind_tls_proxy=args.behind_tls_proxy, allowed_hosts=list(args.allowed_host or []),
                         login=LoginPolicy(token_lifetime=args.login_hours * 3600,
                                           token_idle=args.login_idle_minutes * 60),
                         connections=ConnectionLimits(max_connections=args.max_connections,
                                                      max_connections_per_address=args.max_connections_per_address),
                         spare_sessions=args.spare_sessions)

    def ready(line: str) -> None:
        print(line, flush=True)
        url = line.split()[-1]
        print(f"TACEResponse web page: {url}  (each page opened gets its own session; Ctrl+C stops)", flush=True)
        if args.open:
            import webbrowser

            webbrowser.open(url)

    serve(options, ready=ready)
    return 0


def _web_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this computer only); any other needs --users and "
                        "TLS (--tls-cert/--tls-key, or --behind-tls-proxy)")
    p.add_argument("--port", type=number(int, 0, 65535, zero="any free port"), default=8080, help="port")
    p.add_argument("--users", default=None, metavar="FILE", help="users file: log-in required (HTTP basic, then a cookie)")
    p.add_argument("--add-user", default=None, metavar="NAME",
                   help="add NAME to --users FILE (password read from the terminal or standard input) and exit; "
                        "changing a password ends that user's logins and sessions")
    p.add_argument("--tls-cert", default=None, metavar="PEM", help="serve HTTPS with this certificate (with --tls-key)")
    p.add_argument("--tls-key", default=None, metavar="PEM")
    p.add_argument("--behind-tls-proxy", action="store_true",
                   help="a reverse proxy in front serves HTTPS: allows a network --host without --tls-cert, marks "
                        "cookies Secure, and takes the browser's address and host from X-Forwarded-For/-Host")
    p.add_argument("--allowed-host", action="append", default=None, metavar="NAME",
                   help="a host name browsers reach this server by (repeatable); requests naming another are refused "
                        "(default: localhost, 127.0.0.1, ::1, the --host address, this machine's name for 0.0.0.0)")
    p.add_argument("--image", action="append", default=None, metavar="PATH",
                   help="open this CT/MR in every session (file or DICOM folder; repeatable, reference first)")
    p.add_argument("--segmentation", default=None, metavar="PATH", help="tumour segmentation of --image")
    p.add_argument("--no-demo", action="store_true", help="start sessions empty instead of on the SYNTHETIC demo case")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--encoder", default=None, choices=["jpeg", "png", "webp"], help="view streaming (default jpeg)")
    p.add_argument("--max-sessions", type=number(int, 1, 10_000), default=4, help="sessions at once (each is a process; default 4)")
    p.add_argument("--max-sessions-per-user", type=number(int, 1, 10_000), default=2,
                   help="sessions one user may have at once (with --users; default 2)")
    p.add_argument("--session-timeout", type=number(int, 1, 7 * 86400), default=60,
                   help="seconds a session lives on after its page closed (then its folder is removed; default 60)")
    p.add_argument("--max-session-hours", type=number(float, 0, 24 * 365, low_open=True), default=12.0,
                   help="a session ends after this many hours, even in use (default 12)")
    p.add_argument("--login-hours", type=number(float, 0, 24 * 365, low_open=True), default=8.0,
                   help="a log-in (its cookie) lasts at most this long (default 8)")
    p.add_argument("--login-idle-minutes", type=number(float, 0, 60 * 24 * 365, low_open=True), default=60.0,
                   help="a log-in not used for this long ends (default 60)")
    p.add_argument("--max-upload-mb", type=number(float, 0, 1e7, low_open=True), default=1024,
                   help="largest uploaded file (default 1024)")
    p.add_argument("--max-session-upload-mb", type=number(float, 0, 1e7, low_open=True), default=4096,
                   help="all uploads of one session (default 4096)")
    p.add_argument("--max-upload-files", type=number(int, 1, 10_000_000), default=4000, help="files one session may upload (default 4000)")
    p.add_argument("--max-image-mb", type=number(float, 0, 1e7, low_open=True), default=1024,
                   help="largest image a session decodes, in MB of voxels, checked from its header (default 1024)")
    p.add_argument("--max-image-megavoxels", type=number(float, 0, 1e6, low_open=True), default=536.870912,
                   help="largest image a session decodes, in millions of voxels (default 536.87 = 512 × 512 × 2048)")
    p.add_argument("--max-session-image-mb", type=number(float, 0, 1e7, low_open=True), default=2048,
                   help="decoded images one session holds at once: its case and segmentation (default 2048)")
    p.add_argument("--max-connections", type=number(int, 1, 1_000_000), default=512, help="open connections in all (default 512)")
    p.add_argument("--max-connections-per-address", type=number(int, 1, 1_000_000), default=64,
                   help="open connections from one address (default 64; not applied with --behind-tls-proxy)")
    p.add_argument("--spare-sessions", type=number(int, 0, 1, zero="no spare: each page starts its own session, "
                                                                "6-12 s on 2 cores"), default=1,
                   help="sessions started ahead of their page, case loaded and model warm (default 1)")
    p.add_argument("--open", action="store_true", help="open the page in this computer's browser")


COMMANDS = [
    Command("web", cmd_web, _web_args,
            "serve the workflow as a web page on Slicer's views and segment editor (one process per session)",
            task="web"),
]
