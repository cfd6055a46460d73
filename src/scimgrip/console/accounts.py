"""Console accounts and setup links: operators (``scimgrip admin create``) and customers' IT admins.

An IT admin is invited by an operator with a one-time **setup link** (``/console/setup/<token>``): 256 random
bits, stored as SHA-256, valid for ``setup_link_lifetime`` (72 h by default), consumed by one atomic UPDATE
so it works exactly once. The admin chooses an e-mail address and a password there (argon2id).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets

from scimgrip.scim.errors import InvalidValue
from scimgrip.storage.sql.web_store import OPERATOR, TENANT_ADMIN, Account, SetupLink, WebStore
from scimgrip.web.passwords import hash_password, password_problem, verify_password

SETUP_PREFIX = "sgs_"


def new_account_id() -> str:
    return "acc_" + secrets.token_hex(10)


def hash_setup_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def valid_email(email: str) -> bool:
    """A plausible address (one @, a dot in the domain, no spaces): we never send mail, it is a login name."""
    local, at, domain = email.partition("@")
    return bool(at and local and "." in domain and not any(c.isspace() for c in email) and len(email) <= 320)


class Accounts:
    def __init__(self, store: WebStore) -> None:
        self.store = store

    def create(self, kind: str, tenant_id: int | None, email: str, password: str) -> Account:
        if not valid_email(email):
            raise InvalidValue("enter a valid e-mail address")
        problem = password_problem(password)
        if problem:
            raise InvalidValue(problem)
        return self.store.create_account(new_account_id(), kind, tenant_id, email, hash_password(password))

    def create_operator(self, email: str, password: str) -> Account:
        return self.create(OPERATOR, None, email, password)

    def authenticate(self, kind: str, tenant_id: int | None, email: str, password: str) -> Account | None:
        """The account if the password matches; the same None (and the same argon2 cost) for every failure."""
        account = self.store.find_account(kind, tenant_id, email) if valid_email(email) else None
        ok = verify_password(account.password_hash if account is not None else None, password)
        if account is None or not ok:
            return None
        self.store.note_login(account.id)
        return account

    # -- setup links -------------------------------------------------------------------------------------------
    def create_setup_link(self, tenant_id: int, lifetime: dt.timedelta,
                          created_by: str | None) -> tuple[str, SetupLink]:
        token = SETUP_PREFIX + secrets.token_urlsafe(32)
        link = self.store.add_setup_link(hash_setup_token(token), tenant_id,
                                         dt.datetime.now(dt.UTC) + lifetime, created_by)
        return token, link

    def peek_setup_link(self, token: str, now: dt.datetime) -> SetupLink | None:
        """The link if it is still usable (for showing the form)."""
        if not token.startswith(SETUP_PREFIX) or len(token) > 100:
            return None
        link = self.store.get_setup_link(hash_setup_token(token))
        if link is None or link.used is not None or link.expires <= now:
            return None
        return link

    def redeem_setup_link(self, token: str, email: str, password: str, confirm: str) -> Account:
        """Create the tenant's IT admin and consume the link, or raise InvalidValue (link unchanged then)."""
        if not valid_email(email):
            raise InvalidValue("enter a valid e-mail address")
        problem = password_problem(password, confirm)
        if problem:
            raise InvalidValue(problem)
        now = dt.datetime.now(dt.UTC)
        if self.peek_setup_link(token, now) is None:
            raise InvalidValue("this setup link is invalid, expired or already used")
        link = self.store.use_setup_link(hash_setup_token(token), now)
        if link is None:
            raise InvalidValue("this setup link is invalid, expired or already used")
        password_hash = hash_password(password)
        existing = self.store.find_account(TENANT_ADMIN, link.tenant_id, email)
        if existing is not None:       # a second link for the same admin resets the password
            self.store.set_password(existing.id, password_hash)
            return existing
        return self.store.create_account(new_account_id(), TENANT_ADMIN, link.tenant_id, email, password_hash)
