from tests.server.conftest import database  # noqa: F401  (module-scoped fresh SQLite / PostgreSQL database)
