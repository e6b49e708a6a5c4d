"""The fake engine keeps step with the Backend protocol: a method the protocol gains, or a parameter
it renames, fails here before a test of Lab or grading passes against a fake that no longer fits."""

from __future__ import annotations

import inspect

from labctl.backends.base import Backend

from .fakes import FakeBackend


def protocol_methods() -> dict[str, inspect.Signature]:
    return {name: inspect.signature(member) for name, member in vars(Backend).items()
            if callable(member) and not name.startswith("_")}


def test_the_fake_has_every_method_of_the_backend_protocol_with_the_same_parameters():
    methods = protocol_methods()
    assert "remove" in methods and "engine_nofile_limit" in methods  # the protocol is read, not empty
    for name, signature in methods.items():
        fake = inspect.signature(getattr(FakeBackend, name))
        assert [(p.name, p.kind, p.default) for p in fake.parameters.values()] == \
               [(p.name, p.kind, p.default) for p in signature.parameters.values()], name
