"""What the CLI tests share: only the ConvNeXt plugin loaded, and a CliRunner call that never hides a traceback."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
from typer.testing import CliRunner

from lwd_rules.cli import app
from lwd_rules.plugins import use_registry

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# The rule sets the ConvNeXt plugin ships, in the sorted order the CLI lists them.
CONVNEXT_SETS = [
    "convnext",
    "convnext-group",
    "convnext-hf",
    "convnext-hf-group",
    "convnext-timm",
    "convnext-timm-group",
    "convnext-torchvision",
    "convnext-torchvision-group",
]


@pytest.fixture(autouse=True)
def only_convnext_plugin(monkeypatch: pytest.MonkeyPatch):
    """Load only the ConvNeXt plugin (other test plugins may come and go in the environment)."""
    monkeypatch.setenv("LWD_RULES_PLUGINS", "convnext")
    monkeypatch.delenv("LWD_RULES_STRICT_PLUGINS", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    previous = use_registry(None)
    yield
    use_registry(previous)


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        return self.stdout.splitlines()


def run(*args: object) -> Run:
    result = CliRunner().invoke(app, [str(a) for a in args])
    # Anything but SystemExit escaping the command would be a traceback for a user.
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    stdout, stderr = ANSI.sub("", result.stdout), ANSI.sub("", result.stderr)
    assert "Traceback" not in stdout and "Traceback" not in stderr
    return Run(result.exit_code, stdout, stderr)
