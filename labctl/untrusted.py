"""Text that came from a submission, made safe to show: the one output path for the server's bytes.

A student's server controls its log, its responses, its thread and process names and the files
it ships. Shown raw, those bytes can clear a terminal, retitle its window, hide text behind
bidirectional overrides, or, on a CI runner, become workflow commands (a line that starts with
`::` after any whitespace, or `##[`, is executed by GitHub's runner: `::error`, `::add-mask`,
`::stop-commands::TOKEN`).

Two defences, each in one place:
- `printable(text)`: every control character (C0, DEL, C1), Unicode bidirectional control and
  line/paragraph separator becomes visible `\\xNN` / `\\uNNNN` text. Every message that carries
  the server's text passes it through here; `shown(text)` also marks command lines (`neutralize`)
  and is what every report renderer uses, since a report file may be printed in a CI step.
- `CommandGuard`: labctl's own stdout and stderr, when they are not a terminal, go through a
  stream that marks every line a runner would read as a workflow command, whatever wrote it
  and however a table wrapped it. labctl's deliberate annotations (the github report) are the
  only lines written past it, with `CommandGuard.command`.
"""

from __future__ import annotations

import atexit
import io
import re
import sys
from typing import TextIO

# C0 controls but TAB and LF, DEL, C1 controls; bidi embeddings, overrides and isolates; marks
# that reorder text; the Unicode line and paragraph separators (some viewers break lines there).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029\ufeff]")
_CONTROL_KEEP_CR = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069"
                              "\u2028\u2029\ufeff]")

#: What a CI runner reads as a command at the start of a line (after whitespace): GitHub's
#: `::command` and its legacy `##[command]` (Azure Pipelines reads `##vso[` too).
COMMAND_PREFIXES = ("::", "##[", "##vso[")


def _visible(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, keep_cr: bool = False) -> str:
    """The text with every control character visible as \\xNN or \\uNNNN; CRLF becomes LF (a lone
    CR, which moves the cursor back over a line, becomes \\x0d) unless keep_cr. TAB and LF stay."""
    if keep_cr:
        return _CONTROL_KEEP_CR.sub(_visible, text)
    return _CONTROL.sub(_visible, text.replace("\r\n", "\n"))


def shown(text: str, keep_cr: bool = False) -> str:
    """The server's text as every report shows it: printable, and no line a runner would execute
    (a report file may be `cat` in a CI step)."""
    return neutralize(printable(text, keep_cr))


def printable_all(value):
    """shown() applied to every string of a JSON-like document (keys too). Platforms that keep
    results in PostgreSQL jsonb refuse \\u0000, and a colour code is noise in a web page."""
    if isinstance(value, str):
        return shown(value)
    if isinstance(value, dict):
        return {printable_all(key): printable_all(item) for key, item in value.items()}
    if isinstance(value, list):
        return [printable_all(item) for item in value]
    return value


def from_bytes(data: bytes) -> str:
    """Bytes the server wrote (a log, a response), as printable text: bad UTF-8 becomes U+FFFD."""
    return printable(data.decode("utf-8", errors="replace"))


def is_command(line: str) -> bool:
    """Would a CI runner read this line as a workflow command?"""
    return line.lstrip().startswith(COMMAND_PREFIXES)


def neutralize(text: str) -> str:
    """Each line that a runner would read as a command, with its first character made visible
    (`::error` -> `\\x3a:error`): the text still reads the same to a person."""
    if not any(prefix in text for prefix in COMMAND_PREFIXES):
        return text
    return "".join(_mark(line) for line in re.split(r"(?<=[\r\n])", text))


def _mark(line: str) -> str:
    if not is_command(line):
        return line
    indent = len(line) - len(line.lstrip())
    return f"{line[:indent]}\\x{ord(line[indent]):02x}{line[indent + 1:]}"


class CommandGuard(io.TextIOBase):
    """A text stream that writes through to `stream`, marking lines a runner would execute.

    A line's fate is known once its first non-blank characters are: until then (a few
    characters at most) its start is held back, so a command split over two writes, or pushed
    to the start of a line by a table that wrapped, is still caught. CR counts as a line break,
    as it does for the runner.
    """

    def __init__(self, stream: TextIO):
        super().__init__()
        self.stream = stream
        self._head = ""          # the start of the current line, while undecided
        self._decided = False    # True once the current line is known to be harmless

    # -- the file interface rich and print need --------------------------------------------------

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.stream, "encoding", "utf-8")

    @property
    def buffer(self):
        """The raw byte stream, for output the user asked to get as it is (`labctl exec`)."""
        return self.stream.buffer

    def write(self, text: str) -> int:
        out = []
        for piece in re.split(r"(?<=[\r\n])", text):
            if not piece:
                continue
            if self._decided:
                out.append(piece)
            else:
                self._head += piece
                out.append(self._settle())
            if piece.endswith(("\n", "\r")):
                if not self._decided:
                    out.append(self._release())
                self._decided = False
        self.stream.write("".join(out))
        return len(text)

    def _settle(self) -> str:
        """Decide the held line start if its first non-blank characters tell; return what to write."""
        stripped = self._head.lstrip()
        ended = self._head.endswith(("\n", "\r"))
        if is_command(self._head):
            self._decided = True
            return self._release(mark=True)
        if ended or not any(prefix.startswith(stripped) for prefix in COMMAND_PREFIXES):
            self._decided = True
            return self._release()
        return ""  # blank so far, or a proper start of a prefix (":", "##"): wait for more

    def _release(self, mark: bool = False) -> str:
        head, self._head = self._head, ""
        return _mark(head) if mark else head

    def command(self, line: str) -> None:
        """Write one workflow command on purpose (labctl's own annotations), on a line of its own."""
        self.flush()
        if self._head or self._decided:
            self.stream.write(self._release() + "\n")
            self._decided = False
        self.stream.write(line.rstrip("\n") + "\n")
        self.stream.flush()

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        if self._head:
            self.stream.write(self._release())
        self.stream.flush()


def guard_standard_streams() -> None:
    """Put a CommandGuard in front of stdout and stderr when they are not a terminal (CI logs)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, CommandGuard) and not stream.isatty():
            guard = CommandGuard(stream)
            setattr(sys, name, guard)
            atexit.register(guard.close)  # a held line start (a few blanks or a ':') is not lost


def write_command(line: str) -> None:
    """Write a deliberate workflow command to stdout, past the guard when there is one."""
    if isinstance(sys.stdout, CommandGuard):
        sys.stdout.command(line)
    else:
        sys.stdout.write(line.rstrip("\n") + "\n")
        sys.stdout.flush()
