"""Users of a served ``tace-response web``: a users file of scrypt password hashes, and logging in.

One line per user, ``name:scrypt$N$r$p$salt$hash`` (hex), ``#`` starts a comment. The file is
written with mode 0600. Passwords are compared in constant time. Serving to a network without a
users file is refused by the launcher (no anonymous remote access).

Logging in (:class:`Logins`): the users file is read again when it changes, and a login token
(the cookie) stays valid only while its user's hash is unchanged, for at most a set time and a
set idle time, until a logout. :class:`LoginGuard` counts failed passwords per user and per
address and locks either out for a while when there are too many; :meth:`Logins.check_password`
runs scrypt in a small thread pool (never on the event loop) and spends the same scrypt on an
unknown name as on a known one, so the answer's timing does not tell which names exist.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.files import atomic_path

logger = logging.getLogger(__name__)

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


# --- logging in -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoginPolicy:
    """How logins are limited (seconds and counts)."""

    max_failures_per_user: int = 5      # wrong passwords for one name …
    max_failures_per_address: int = 20  # … or from one address, within the window, lock it out
    failure_window: float = 900.0
    lockout: float = 900.0
    token_lifetime: float = 8 * 3600.0  # a login lasts this long at most …
    token_idle: float = 3600.0          # … and ends after this long unused
    hash_threads: int = 2               # scrypt computations at once (each ~16 MB, ~0.1 s)


class LoginGuard:
    """Failed logins per user name and per address; a key with too many recent failures is locked."""

    def __init__(self, policy: LoginPolicy) -> None:
        self.policy = policy
        self._failures: dict[str, collections.deque] = {}

    def _recent(self, key: str, now: float) -> collections.deque:
        failures = self._failures.setdefault(key, collections.deque())
        while failures and failures[0] < now - max(self.policy.failure_window, self.policy.lockout):
            failures.popleft()
        return failures

    def retry_after(self, user: str, address: str, now: float | None = None) -> float:
        """Seconds until ``user`` may try again from ``address`` (0: now)."""
        now = time.monotonic() if now is None else now
        wait = 0.0
        for key, limit in ((f"user:{user}", self.policy.max_failures_per_user),
                           (f"address:{address}", self.policy.max_failures_per_address)):
            failures = self._recent(key, now)
            in_window = [t for t in failures if t >= now - self.policy.failure_window]
            if len(in_window) >= limit:
                wait = max(wait, failures[-1] + self.policy.lockout - now)
        return max(0.0, wait)

    def failed(self, user: str, address: str) -> None:
        now = time.monotonic()
        for key in (f"user:{user}", f"address:{address}"):
            self._recent(key, now).append(now)
        if len(self._failures) > 100_000:  # bounded memory under a flood of names
            self._failures = {k: v for k, v in self._failures.items() if v and v[-1] > now - self.policy.failure_window}

    def succeeded(self, user: str) -> None:
        self._failures.pop(f"user:{user}", None)


@dataclass
class Login:
    """One login token (the cookie's value)."""

    user: str
    encoded: str          # the user's hash when the token was issued: a new password ends the token
    issued: float = field(default_factory=time.monotonic)
    used: float = field(default_factory=time.monotonic)
    ended: bool = False   # logged out


class Logins:
    """The users file, the login tokens and the login guard of one launcher."""

    def __init__(self, users_file: str | Path, policy: LoginPolicy | None = None) -> None:
        self.path = Path(users_file)
        self.policy = policy or LoginPolicy()
        self.guard = LoginGuard(self.policy)
        self.users = read_users(self.path)
        self._stamp = self._file_stamp()
        self._checked = time.monotonic()
        self.tokens: dict[str, Login] = {}
        self._pool = ThreadPoolExecutor(max_workers=self.policy.hash_threads, thread_name_prefix="tace-scrypt")
        self._decoy = hash_password(secrets.token_urlsafe(16))  # what an unknown name is compared with
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _file_stamp(self) -> tuple:
        try:
            info = self.path.stat()
            return info.st_mtime_ns, info.st_size, info.st_ino
        except OSError:
            return ()

    def refresh(self) -> None:
        """Read the users file again when it changed (at most once a second)."""
        now = time.monotonic()
        if now - self._checked < 1.0:
            return
        self._checked = now
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return
        try:
            self.users = read_users(self.path)
            self._stamp = stamp
            logger.info("users file %s read again (%d users)", self.path, len(self.users))
        except InputError as exc:  # a half-edited file: keep the users we had
            logger.warning("users file not read again: %s", exc)

    def user_of(self, token: str | None) -> str | None:
        """The user a token logs in, or None (unknown, expired, idle too long, password changed)."""
        self.refresh()
        login = self.tokens.get(token or "")
        if login is None:
            return None
        now = time.monotonic()
        if (now - login.issued > self.policy.token_lifetime or now - login.used > self.policy.token_idle
                or self.users.get(login.user) != login.encoded):
            self.tokens.pop(token, None)
            return None
        login.used = now
        return login.user

    def issue(self, user: str) -> str:
        token = secrets.token_urlsafe(32)
        self.tokens[token] = Login(user, self.users[user])
        now = time.monotonic()
        for old in [t for t, login in self.tokens.items() if now - login.used > self.policy.token_idle]:
            del self.tokens[old]
        return token

    def logout(self, token: str | None) -> str | None:
        login = self.tokens.pop(token or "", None)
        if login is None:
            return None
        login.ended = True
        return login.user

    def still_valid(self, login: Login) -> bool:
        """False once ``login`` logged out or its user's password changed (or the user was removed)."""
        return not login.ended and self.users.get(login.user) == login.encoded

    async def log_in(self, user: str, password: str, address: str) -> tuple[bool, float]:
        """``(password right, seconds locked out)`` for a log-in of ``user`` from ``address``.

        Checks of one user, and checks from one address, run one after another, so guesses sent at
        once meet the lockout exactly as guesses sent in turn (a right password is never refused
        for the others running beside it)."""
        async with self._one_at_a_time(f"user:{user}"), self._one_at_a_time(f"address:{address}"):
            wait = self.guard.retry_after(user, address)
            if wait > 0:
                return False, wait
            if await self.check_password(user, password):
                self.guard.succeeded(user)
                return True, 0.0
            self.guard.failed(user, address)
            return False, 0.0

    @contextlib.asynccontextmanager
    async def _one_at_a_time(self, key: str):
        lock, waiting = self._locks.get(key, (None, 0))
        lock = lock or asyncio.Lock()
        self._locks[key] = (lock, waiting + 1)
        try:
            async with lock:
                yield
        finally:
            lock, waiting = self._locks[key]
            if waiting <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, waiting - 1)

    async def check_password(self, user: str, password: str) -> bool:
        """True when ``password`` is ``user``'s; scrypt runs in the pool, an unknown user costs the same."""
        self.refresh()
        encoded = self.users.get(user)
        loop = asyncio.get_running_loop()
        matches = await loop.run_in_executor(self._pool, verify_password, password, encoded or self._decoy)
        return bool(matches and encoded is not None)
