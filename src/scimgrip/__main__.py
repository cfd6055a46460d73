"""``python -m scimgrip`` — same as the ``scimgrip`` console script."""

from scimgrip.cli.main import app

app(prog_name="scimgrip")
