"""The model of an impairment: delay, jitter, loss and rate on the path between a client (or the injector)
and the server, as lab.yaml, exercise.yaml and `labctl impair` say it.

Three ways in, one model (`Impairment`): a node's `impair:` in lab.yaml (set when the lab comes up), a
check's `impair:` in exercise.yaml (set on the client and the injector for that check), and
`labctl impair NODE --delay 100ms --loss 1%` at run time. Setting one on a running lab is labctl/impair.py's.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, ValidationError, WithJsonSchema, model_validator
from pydantic_core import InitErrorDetails

from labctl.errors import LabctlError
from labctl.harness.wire import ImpairSet
from labctl.spec_errors import SpecModel, broken_rule, expected, option_problems, with_rules

__all__ = ["CAPABILITY", "IMPAIRED_ROLES", "Impairment", "from_options"]

#: The roles an impairment is set on: the nodes checks run from. The server never (it gets no NET_ADMIN),
#: nor the observer (it has no network).
IMPAIRED_ROLES = ("client", "injector")
#: The capability tc and iptables need in the impaired node.
CAPABILITY = "NET_ADMIN"

DURATION = r"^[0-9]+(\.[0-9]+)?(us|ms|s)$"
SHARE = r"^[0-9]+(\.[0-9]+)?%$"
RATE = r"^[0-9]+(\.[0-9]+)?(bit|kbit|mbit|gbit)$"
_DURATION_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}
_RATE_UNITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9}
MAX_DELAY_MS = 10_000.0
MIN_RATE_BIT, MAX_RATE_BIT = 8_000, 10**10


# -- values ------------------------------------------------------------------------------------------------

def _number_and_unit(text: str, pattern: str) -> tuple[float, str]:
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([a-z%]+)", text)
    if not match or not re.fullmatch(pattern, text):
        raise ValueError(text)
    return float(match.group(1)), match.group(2)


def duration_ms(text: str) -> float:
    number, unit = _number_and_unit(text, DURATION)
    return number * _DURATION_UNITS[unit]


def share_percent(text: str) -> float:
    return _number_and_unit(text, SHARE)[0]


def rate_bits(text: str) -> int:
    number, unit = _number_and_unit(text, RATE)
    return round(number * _RATE_UNITS[unit])


def _text(value: Any) -> str | None:
    return value.strip().lower() if isinstance(value, str) else None


def _duration(value: Any) -> Any:
    text = _text(value)
    if text is None or not re.fullmatch(DURATION, text):
        raise expected("a time like 100ms, 1.5s or 500us")
    if duration_ms(text) > MAX_DELAY_MS:
        raise expected(f"at most {MAX_DELAY_MS / 1000:g}s")
    return text


def _share(value: Any) -> Any:
    text = _text(value)
    if text is None or not re.fullmatch(SHARE, text):
        hint = f" (write {value:g}%)" if isinstance(value, (int, float)) and not isinstance(value, bool) else ""
        raise expected("a share of packets like 1% or 0.5%", hint)
    if share_percent(text) > 100:
        raise expected("a share of at most 100%")
    return text


def _rate(value: Any) -> Any:
    text = _text(value)
    if text is None or not re.fullmatch(RATE, text):
        hint = " (tc's kbps and mbps are bytes per second: write kbit or mbit)" if text and text.endswith("bps") else ""
        raise expected("a rate in bits per second like 1mbit, 500kbit or 10gbit", hint)
    if not MIN_RATE_BIT <= rate_bits(text) <= MAX_RATE_BIT:
        raise expected("a rate from 8kbit to 10gbit")
    return text


Duration = Annotated[str, BeforeValidator(_duration), WithJsonSchema({"type": "string", "pattern": DURATION})]
Share = Annotated[str, BeforeValidator(_share), WithJsonSchema({"type": "string", "pattern": SHARE})]
Rate = Annotated[str, BeforeValidator(_rate), WithJsonSchema({"type": "string", "pattern": RATE})]


class Impairment(SpecModel):
    """Delay, jitter, loss and rate on the server's packets as a client or the injector receives them: a
    round trip grows by the delay, the server's packets are lost in that share, its answers come at most
    at that rate. Only the path to the lab's server is touched."""

    delay: Duration | None = Field(None, description="Added to every packet from the server, so to every round "
                                                     "trip: 100ms, 1.5s, 500us (at most 10s).")
    jitter: Duration | None = Field(None, description="Each packet's delay varies by up to this much either way "
                                                      "(drawn per packet); at most the delay, and only with one.")
    loss: Share | None = Field(None, description="The share of the server's packets lost at random: 1%, 0.5%.")
    rate: Rate | None = Field(None, description="The most the server's packets may carry, in bits per second: "
                                                "1mbit, 500kbit (8kbit to 10gbit).")

    @model_validator(mode="wrap")
    @classmethod
    def _rules(cls, data: Any, handler: Any) -> Impairment:
        return with_rules(handler, data, _impairment_rules(data), cls.__name__)

    def params(self) -> ImpairSet:
        """The numbers the harness takes (0: not set)."""
        return {"delay_ms": duration_ms(self.delay) if self.delay else 0.0,
                "jitter_ms": duration_ms(self.jitter) if self.jitter else 0.0,
                "loss_percent": share_percent(self.loss) if self.loss else 0.0,
                "rate_bit": rate_bits(self.rate) if self.rate else 0}

    @classmethod
    def of(cls, numbers: ImpairSet) -> Impairment:
        """The impairment the harness says is set, in the words lab.yaml uses."""
        return cls(delay=_ms_text(numbers["delay_ms"]) if numbers.get("delay_ms") else None,
                   jitter=_ms_text(numbers["jitter_ms"]) if numbers.get("jitter_ms") else None,
                   loss=f"{numbers['loss_percent']:g}%" if numbers.get("loss_percent") else None,
                   rate=_rate_text(numbers["rate_bit"]) if numbers.get("rate_bit") else None)

    def __str__(self) -> str:
        parts = []
        if self.delay:
            parts.append(f"delay {self.delay}" + (f" ±{self.jitter}" if self.jitter else ""))
        if self.loss:
            parts.append(f"loss {self.loss}")
        if self.rate:
            parts.append(f"rate {self.rate}")
        return ", ".join(parts)


def _impairment_rules(data: Any) -> list[InitErrorDetails]:
    """At least one impairment; a jitter goes with a delay and is at most that delay (checked on the raw
    data, so these show up together with every other mistake)."""
    if not isinstance(data, dict):
        return []
    if not any(data.get(key) is not None for key in ("delay", "jitter", "loss", "rate")):
        return [broken_rule((), data, "expected at least one of delay, jitter, loss or rate (like delay: 100ms), "
                                      "found none")]
    jitter, delay = _text(data.get("jitter")), _text(data.get("delay"))
    if jitter is None or not re.fullmatch(DURATION, jitter):
        return []
    if data.get("delay") is None:
        return [broken_rule(("jitter",), data["jitter"], f"expected a delay with it (the jitter varies the delay, "
                                                         f"like delay: 100ms, jitter: 10ms), found jitter {jitter} alone")]
    if delay is not None and re.fullmatch(DURATION, delay) and duration_ms(jitter) > duration_ms(delay):
        return [broken_rule(("jitter",), data["jitter"], f"expected at most the delay ({delay}: a packet cannot "
                                                         f"arrive before it was sent), found {jitter}")]
    return []


def _ms_text(ms: float) -> str:
    return f"{ms / 1000:g}s" if ms >= 1000 and ms % 1000 == 0 else f"{ms:g}ms"


def _rate_text(bits: int) -> str:
    for unit, size in (("gbit", 10**9), ("mbit", 10**6), ("kbit", 10**3)):
        if bits >= size and bits % size == 0:
            return f"{bits // size}{unit}"
    return f"{bits}bit"


def from_options(delay: str | None = None, jitter: str | None = None, loss: str | None = None,
                 rate: str | None = None) -> Impairment:
    """The impairment a command line asks for (`--delay 100ms ...`); its mistakes as `--delay: expected ...`."""
    given = {key: value for key, value in {"delay": delay, "jitter": jitter, "loss": loss, "rate": rate}.items()
             if value is not None}
    try:
        return Impairment.model_validate(given)
    except ValidationError as error:
        raise LabctlError("; ".join(option_problems(Impairment, error, "--"))) from None
