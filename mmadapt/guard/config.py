"""The recipe's ``guard:`` section (strict; off when absent). Every key has a default, so
``guard: {}`` turns on the output rules (PII and secret redaction) with no input rules and no
escalation; see README "Guardrails" for the table."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from mmadapt.config import StrictModel

PII_KINDS: tuple[str, ...] = ("email", "phone", "card", "iban", "secret")
# per-example metrics the guard's outcomes give (mmadapt.guard.apply.guard_metric); every report of a
# guarded recipe has the first three, a suite may name any
REPORT_METRICS: tuple[str, ...] = ("refusal_rate", "escalation_rate", "redactions")
GUARD_METRICS: tuple[str, ...] = (*REPORT_METRICS, "stopped_rate", "caught_rate", "planted_redacted")
GUARD_LOWER_IS_BETTER: frozenset[str] = frozenset({"refusal_rate", "escalation_rate", "stopped_rate"})  # a suite bar is a maximum


def _compiles(patterns: list[str]) -> list[str]:
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"pattern {pattern!r} is not a regular expression ({exc})") from None
    return patterns


class InputRules(StrictModel):
    """What an input (a question, an image prompt, a speech transcript) may not be."""

    blocked_patterns: list[str] = Field(
        default_factory=list, description="regular expressions (case-insensitive); an input that matches one is refused"
    )
    blocked_topics: dict[str, list[str]] = Field(
        default_factory=dict,
        description="topic -> keywords or phrases (whole words, case-insensitive); an input naming one is refused",
    )
    max_chars: int | None = Field(None, ge=1, le=10_000_000, description="longer inputs are refused; None = no limit")
    check_passages: bool = Field(
        True, description="blocked_patterns also checked on the passages a prediction retrieved (injection through the knowledge base): escalated"
    )

    @field_validator("blocked_patterns")
    @classmethod
    def _regexes(cls, value: list[str]) -> list[str]:
        return _compiles(value)

    @field_validator("blocked_topics")
    @classmethod
    def _keywords(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for topic, words in value.items():
            if not words or any(not w.strip() for w in words):
                raise ValueError(f"topic {topic!r} needs at least one non-empty keyword")
        return value


class OutputRules(StrictModel):
    """What an output (an answer, a transcript) may not show."""

    redact: list[Literal["email", "phone", "card", "iban", "secret"]] = Field(
        default_factory=lambda: list(PII_KINDS), description="kinds replaced by the placeholder; [] = none"
    )
    placeholder: str = Field("[{kind} redacted]", max_length=200, description="what replaces a match; {kind} is its kind")
    allow: list[str] = Field(default_factory=list, description="exact strings never redacted (e.g. the public support address)")
    phone_region: str = Field("US", pattern=r"^[A-Z]{2}$", description="region for numbers written without +country code")
    blocked_terms: list[str] = Field(
        default_factory=list, description="words or phrases (whole words, case-insensitive); an output holding one is refused"
    )


class Escalation(StrictModel):
    """When an answer goes to a human instead (modalities whose predictions carry the signals: text)."""

    min_retrieval_score: float | None = Field(
        None, ge=-1.0, le=1.0, description="best retrieved passage's cosine score below this: escalated (stacks without retrieval: not checked)"
    )
    min_mean_logprob: float | None = Field(
        None, le=0.0, description="the answer's mean token log-probability below this: escalated"
    )


class GuardConfig(StrictModel):
    """``guard:`` — input rules, output rules, escalation, and the messages shown instead."""

    input: InputRules = Field(default_factory=InputRules)
    output: OutputRules = Field(default_factory=OutputRules)
    escalation: Escalation = Field(default_factory=Escalation)
    refusal: str = Field("Sorry, I can't help with that request.", min_length=1, max_length=2000)
    handoff: str = Field(
        "I'm not sure about this one, so I'm passing it to a colleague who will get back to you.", min_length=1, max_length=2000
    )

    @property
    def escalates(self) -> bool:
        return self.escalation.min_retrieval_score is not None or self.escalation.min_mean_logprob is not None
