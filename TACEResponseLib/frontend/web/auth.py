"""Users of a served ``tace-response web``: a users file of scrypt password hashes.

One line per user, ``name:scrypt$N$r$p$salt$hash`` (hex), ``#`` starts a comment. The file is
written with mode 0600. Passwords are compared in constant time. Serving to a network without a
users file is refused by the launcher (no anonymous remote access).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from pathlib import Path

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.files import atomic_path

SCRYPT = {"n": 2 ** 14, "r": 8, "p": 1}
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


def hash_password(password: str, salt: bytes | None = None) -> str:
    """``scrypt$N$r$p$salt$hash`` of a password (random 16-byte salt unless given)."""
    if not password:
        raise InputError("the password is empty")
    salt = salt or os.urandom(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=SCRYPT["n"], r=SCRYPT["r"], p=SCRYPT["p"],
                            dklen=32)
    return f"scrypt${SCRYPT['n']}${SCRYPT['r']}${SCRYPT['p']}${salt.hex()}${digest.hex()}"


def verify_password(password: str, encoded: str) -> bool:
    """True when ``password`` matches the encoded hash (constant-time comparison)."""
    try:
        scheme, n, r, p, salt, expected = encoded.split("$")
        if scheme != "scrypt":
            return False
        digest = hashlib.scrypt(password.encode("utf-8"), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p),
                                dklen=len(expected) // 2)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(digest.hex(), expected)


def read_users(path: str | Path) -> dict[str, str]:
    """``{name: encoded hash}`` from a users file; InputError naming the file and line when it is wrong."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"users file {path} does not exist (create it with: tace-response web --users {path} "
                         "--add-user NAME)")
    users: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, encoded = line.partition(":")
        if not sep or not _NAME.match(name) or not encoded.startswith("scrypt$"):
            raise InputError(f"users file {path}, line {number}: expected NAME:scrypt$… (made by --add-user)")
        users[name] = encoded
    if not users:
        raise InputError(f"users file {path} has no user; add one with --add-user NAME")
    return users


def add_user(path: str | Path, name: str, password: str) -> Path:
    """Add or replace one user in a users file (created if missing), written atomically with mode 0600."""
    if not _NAME.match(name or ""):
        raise InputError(f"user name {name!r}: use 1–64 letters, digits, '_', '.', '@' or '-'")
    path = Path(path)
    users = read_users(path) if path.is_file() and path.stat().st_size else {}
    users[name] = hash_password(password)
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{user}:{encoded}\n" for user, encoded in sorted(users.items())), encoding="utf-8")
        os.chmod(tmp, 0o600)
    return path
