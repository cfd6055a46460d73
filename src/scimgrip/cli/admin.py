"""``scimgrip admin``: console operators (create, list, set a new password).

Passwords are read from a hidden prompt (asked twice) or, for scripts, from standard input with
``--password-stdin``; never from the command line, where they would land in shell history and ``ps``.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console

from scimgrip.console.accounts import Accounts
from scimgrip.scim.errors import ScimError
from scimgrip.settings import Settings
from scimgrip.storage import open_storage
from scimgrip.storage.sql.web_store import OPERATOR, WebStore
from scimgrip.web.passwords import hash_password, password_problem

admin_app = typer.Typer(help="Console operators: create them, list them, reset a password.", no_args_is_help=True)
out = Console()
err = Console(stderr=True)

DatabaseOpt = Annotated[str | None, typer.Option("--database", "-d", envvar="SCIMGRIP_DATABASE_URL",
                                                 help="sqlite:///path.db or postgresql://… (default ./scimgrip.db)")]
StdinOpt = Annotated[bool, typer.Option("--password-stdin", help="Read the password from standard input.")]


def _password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    problem = password_problem(password)
    if problem:
        err.print(f"[red]error:[/red] {problem}")
        raise typer.Exit(code=1)
    return password


@admin_app.command("create")
def admin_create(email: str, password_stdin: StdinOpt = False, database: DatabaseOpt = None) -> None:
    """Create an operator: signs in at /console/login, sees and creates every tenant."""
    password = _password(password_stdin)
    storage = open_storage(database or Settings().database_url)
    try:
        account = Accounts(WebStore(storage)).create_operator(email, password)
    except ScimError as exc:
        err.print(f"[red]error:[/red] {exc.detail}")
        raise typer.Exit(code=1) from None
    finally:
        storage.close()
    out.print(f"operator {account.email} created ({account.id}); sign in at <public URL>/console/login")


@admin_app.command("list")
def admin_list(database: DatabaseOpt = None) -> None:
    """List the operators."""
    storage = open_storage(database or Settings().database_url)
    try:
        for a in WebStore(storage).list_accounts(OPERATOR):
            last = a.last_login.isoformat() if a.last_login else "never"
            out.print(f"{a.email}\t{a.id}\tlast sign-in: {last}")
    finally:
        storage.close()


@admin_app.command("set-password")
def admin_set_password(email: str, password_stdin: StdinOpt = False, database: DatabaseOpt = None) -> None:
    """Give an operator a new password."""
    password = _password(password_stdin)
    storage = open_storage(database or Settings().database_url)
    try:
        store = WebStore(storage)
        account = store.find_account(OPERATOR, None, email)
        if account is None:
            err.print(f"[red]error:[/red] no operator {email!r}")
            raise typer.Exit(code=1)
        store.set_password(account.id, hash_password(password))
    finally:
        storage.close()
    out.print(f"password of {email} changed")
