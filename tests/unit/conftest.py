"""The unit tests' shared fixtures: the one fake engine, and a lab up on it."""

from __future__ import annotations

import pytest

from labctl.lab import Lab

from .fakes import FakeBackend, up_lab


@pytest.fixture
def fake() -> FakeBackend:
    """An engine whose client sees the server listen at once; each test scripts the rest."""
    engine = FakeBackend()
    engine.harness["client"]["wait_listening"] = lambda params: {"listening": True}
    return engine


@pytest.fixture
def lab(fake: FakeBackend, tmp_path) -> Lab:
    """A lab up on the fake engine, from the repository's lab.yaml, with no submission."""
    return up_lab(fake, tmp_path / "project")
