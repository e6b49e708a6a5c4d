"""The errors labctl shows to a person instead of a traceback.

Every error a user can cause or meet (a bad YAML file, an engine that does not answer,
a server that never listens) is one of these; the CLI prints the message and exits
with the error's exit code: 2 (not gradable / cannot run: bad input, a server that never
starts), 3 (an infrastructure failure: the engine, an image, labctl itself; nobody's
submission is at fault, and it is to be graded again once the machine is fixed).
"""

from __future__ import annotations

#: labctl's exit codes, one per fact (`labctl grade --help`, README "Exit codes").
EXIT_PASSED = 0           # graded, and every graded check passed
EXIT_FAILED = 1           # graded, with failures
EXIT_NOT_GRADABLE = 2     # not gradable: bad input, or the submission could not be graded (its server never listened)
EXIT_INFRASTRUCTURE = 3   # the machine under the grading failed (engine, images, labctl's own bug)


class LabctlError(Exception):
    """An error with a message written for the person at the terminal."""

    exit_code = EXIT_NOT_GRADABLE


class InfrastructureError(LabctlError):
    """The machine under labctl failed, not what labctl was asked to run or grade: exit 3, so a grading
    platform can tell "grade this again later" from "this submission is not gradable"."""

    exit_code = EXIT_INFRASTRUCTURE


class SpecError(LabctlError):
    """A lab.yaml / exercise.yaml that does not match its schema.

    `problems` holds one line per mistake, each `file:line: field: expected ..., found ...`.
    """

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class EngineUnreachable(InfrastructureError):
    """The Docker Engine could not be reached (not running, no permission, bad DOCKER_HOST)."""


class ImageBuildError(InfrastructureError):
    """An image could not be built; the message names the path taken and the fix."""


class LabNotFound(LabctlError):
    """A command named a lab that does not exist (or no lab is running)."""


class SubmissionError(LabctlError):
    """A submission labctl will not copy: over a limit (size, files), or unreadable."""


class BudgetTooShort(LabctlError):
    """A check had too little time left to do its work at all: a matter of time, not of the server (grading
    tells it as a check that ran out of time, or that the grading's budget left no room for)."""


class ContainerGone(LabctlError):
    """A node's container stopped while labctl was using it (the server exited, was killed...)."""


class ServerStartError(LabctlError):
    """The server under test exited or never listened on its port."""


class LimitAboveEngine(LabctlError):
    """A node asked for more of a limit than the engine itself has (a nofile limit above the engine's own
    hard limit): the caller may clamp it to `engine_limit` and say so."""

    def __init__(self, message: str, limit: str, engine_limit: int | None = None):
        super().__init__(message)
        self.limit = limit
        self.engine_limit = engine_limit
