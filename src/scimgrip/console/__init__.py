"""The web console for operators and customers' IT admins: server-rendered pages (Jinja2), one hand-written CSS
file, htmx vendored under ``static/``. Mounted at ``/console`` by :func:`scimgrip.web.install.install_web`."""
