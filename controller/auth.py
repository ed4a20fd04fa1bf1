"""The job API's credential: bearer tokens kept in files readable by their owner only, one per tenant.

The controller reads its token file at start and creates it (mode 0600, a random token) when it does not exist;
further tenants each have a token file of their own. A client sends ``Authorization: Bearer <token>``; every
comparison takes the same time whatever the token given (docs/security.md).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

#: Environment variables a client reads its credential from when it is not given one (in this order).
ENV_TOKEN = "NETAGG_TOKEN"
ENV_TOKEN_FILE = "NETAGG_TOKEN_FILE"
#: Random bytes in a new token (it is written URL-safe base64: 43 characters).
TOKEN_BYTES = 32


class TokenFileError(ValueError):
    """A token file is missing, unreadable, empty or readable by others; the message names the file."""


def default_token_file(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/netagg/controller.token``, by default ``~/.config/netagg/controller.token``."""
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "netagg" / "controller.token"


def read_token(path: Path) -> str:
    """The token in ``path``; raises TokenFileError naming the file."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise TokenFileError(f"token file {path} does not exist") from None
    except OSError as ex:
        raise TokenFileError(f"cannot read token file {path}: {ex.strerror}") from None
    except UnicodeDecodeError:
        raise TokenFileError(f"token file {path} does not hold a token (it is not ASCII text)") from None
    if stat.S_IMODE(mode) & 0o077:
        # Like ssh with a private key: a credential others can read is no credential.
        raise TokenFileError(
            f"token file {path} is readable by others (mode {stat.S_IMODE(mode):04o}): chmod 600 {path}"
        )
    token = text.strip()
    check_token(token, f"token file {path}")
    return token


def check_token(token: str, where: str) -> None:
    """A token must be one word of visible ASCII (it travels in an HTTP header)."""
    if not token or not token.isascii() or not token.isprintable() or any(c.isspace() for c in token):
        raise TokenFileError(f"{where} does not hold a token (one word of visible ASCII characters)")


def load_or_create_token(path: Path) -> tuple[str, bool]:
    """The token in ``path``, creating the file (mode 0600, a new random token) if missing; (token, created)."""
    try:
        return read_token(path), False
    except TokenFileError:
        if path.exists() or path.is_symlink():
            raise
    token = secrets.token_urlsafe(TOKEN_BYTES)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it meanwhile: use theirs
        return read_token(path), False
    except OSError as ex:
        raise TokenFileError(f"cannot create token file {path}: {ex.strerror}") from None
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(token + "\n")
    return token, True


@dataclass(frozen=True, slots=True)
class Tenant:
    """One credential of the job API; ``name`` (not secret) identifies it in listings and logs."""

    name: str
    token: str = field(repr=False)


class Authenticator:
    """Finds the tenant whose token an ``Authorization`` header carries, in constant time per tenant."""

    def __init__(self, tenants: Iterable[Tenant]) -> None:
        self._tenants = [(t, hashlib.sha256(t.token.encode()).digest()) for t in tenants]
        if not self._tenants:
            raise ValueError("the job API needs at least one credential")

    @property
    def tenants(self) -> list[Tenant]:
        return [t for t, _ in self._tenants]

    def tenant(self, authorization: str | None) -> Tenant | None:
        """The tenant of an ``Authorization: Bearer <token>`` header value; None for none or a wrong token."""
        if authorization is None:
            return None
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        # Hash first: compare_digest then compares equal-length values, so no token's length leaks either.
        given = hashlib.sha256(token.strip().encode("utf-8", "replace")).digest()
        found = None
        for tenant, digest in self._tenants:  # every tenant is compared: the time does not say which matched
            if hmac.compare_digest(given, digest) and found is None:
                found = tenant
        return found
