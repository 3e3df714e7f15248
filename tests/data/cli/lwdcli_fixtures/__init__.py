"""Fixtures for tests/test_cli_*.py: model factories for ``lwd-rules explain --model lwdcli_fixtures.models:NAME``."""
