"""Secret Tokens: generation, hashing, verification.

A token is 256 bits from :mod:`secrets`, prefixed ``sgt_`` so secret scanners can recognise it. Only its
SHA-256 is stored: a high-entropy token needs no slow hash (stack-notes §7: Argon2id would cost ~110 ms per
SCIM request; SHA-256 costs under a microsecond), and a hash lookup reveals nothing about the secret. The
lookup is an indexed equality on the hash, and the found hash is compared again with
:func:`hmac.compare_digest`, so no comparison on the secret itself is ever early-exiting.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

TOKEN_PREFIX = "sgt_"
TOKEN_BYTES = 32


def new_token() -> str:
    """A fresh Secret Token (shown once, never stored)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def new_token_id() -> str:
    """Public identifier of a token, used to list and revoke it."""
    return "tok_" + secrets.token_hex(6)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def hashes_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("ascii"), b.encode("ascii"))


def looks_like_token(token: str) -> bool:
    """Cheap shape check before touching the database (bounded length, printable)."""
    return 16 <= len(token) <= 512 and token.isprintable() and " " not in token
