"""Test-session wiring: the real-server fixtures live in tests/harness/ and are loaded here."""

pytest_plugins = [
    "tests.harness.pg_fixtures",
    "tests.harness.mail_fixtures",
    "tests.harness.redis_server",
    "tests.harness.push_receiver",
    "tests.harness.oauth_server",
    "tests.harness.task_leaks",
]
