"""Console passwords: argon2id (RFC 9106) through argon2-cffi with its default (RFC 9106 "low memory")
parameters. A failed lookup still spends one hash, so a login does not reveal which e-mail addresses exist."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

MIN_LENGTH = 12
_hasher = PasswordHasher()          # argon2id
_DUMMY = _hasher.hash("scimgrip-timing-equaliser")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """True if ``password`` matches; with no hash, burn the same time and answer False."""
    try:
        return _hasher.verify(password_hash or _DUMMY, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def password_problem(password: str, confirm: str | None = None) -> str | None:
    """Why a new password is refused, or None. Length over composition rules (NIST SP 800-63B §5.1.1.2)."""
    if len(password) < MIN_LENGTH:
        return f"The password must be at least {MIN_LENGTH} characters long."
    if len(password) > 1024:
        return "The password must be at most 1024 characters long."
    if confirm is not None and confirm != password:
        return "The two passwords differ."
    return None
