"""The guard's text rules, modality-agnostic: input checks (patterns, topics, length) and output
redaction (e-mail, phone, payment card, IBAN, secrets) and blocked terms.

Libraries where one fits: card numbers are confirmed with the Luhn check and IBANs with their
country length and mod-97 check from ``python-stdnum``; phone numbers are found and validated by
``phonenumbers`` (Google's libphonenumber: per-country numbering plans, so ports, versions and
order ids are not numbers). E-mail and secrets are our own regular expressions: no small, kept
library finds secrets in running text (detect-secrets scans files through plugins and entropy
heuristics), and the token formats below are the vendors' published prefixes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from mmadapt.guard.config import GuardConfig, InputRules, OutputRules

EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
# 13-19 digits, optionally in groups split by one space or dash (4111 1111 1111 1111, 4111-1111-...)
CARD = re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w-])")
IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
ID_GLUE = re.compile(r"(?:\w|\w[-_/#])$")
SECRETS = [
    re.compile(r"\bsk-(?:proj-|live-|test-)?[A-Za-z0-9_-]{16,}"),  # OpenAI-style and many others' sk-... keys
    re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),  # AWS access key id
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"),  # GitHub tokens
    re.compile(r"\bgithub_pat_[A-Za-z0-9_]{22,}\b"),
    re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),  # Slack
    re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b"),  # Google API key
    re.compile(r"\b[rsp]k_(?:live|test)_[A-Za-z0-9]{16,}\b"),  # Stripe
    re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),  # JWT
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)"),
]
# key = value / key: value where the key's name holds a secret's word (ZX_API_KEY, client_secret,
# "password"); only the value (8+ characters, not all lowercase letters: "token: required" is prose) is redacted
SECRET_ASSIGNMENT = re.compile(
    r"(?i)\b[\w-]*?(?:api[_ -]?key|secret|access[_ -]?key|token|password|passwd|pwd)[\w-]*[\"']?\s*[:=]\s*[\"']?"
    r"(?P<value>(?-i:(?![a-z]+(?:[\s\"',;]|$)))[^\s\"',;]{8,})"
)


@dataclass
class Outcome:
    """What the guard did to one prediction."""

    refused: bool = False
    escalated: bool = False
    redactions: int = 0
    reason: str | None = None
    kinds: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"refused": self.refused, "escalated": self.escalated, "redactions": self.redactions, "reason": self.reason,
                "kinds": dict(self.kinds)}


def _words(phrases: Iterable[str]) -> re.Pattern | None:
    """One case-insensitive pattern matching any phrase as whole words (inner spaces: any whitespace)."""
    parts = [r"\s+".join(map(re.escape, p.split())) for p in phrases if p.strip()]
    return re.compile(r"(?i)(?<!\w)(?:" + "|".join(parts) + r")(?!\w)") if parts else None


class InputChecker:
    def __init__(self, rules: InputRules):
        self.rules = rules
        self.patterns = [re.compile(p, re.IGNORECASE) for p in rules.blocked_patterns]
        self.topics = {topic: _words(words) for topic, words in rules.blocked_topics.items()}

    def pattern_hit(self, text: str) -> str | None:
        for pattern in self.patterns:
            if pattern.search(text):
                return f"matches blocked pattern {pattern.pattern!r}"
        return None

    def check(self, text: str) -> str | None:
        """Why ``text`` is refused, or None."""
        if self.rules.max_chars is not None and len(text) > self.rules.max_chars:
            return f"longer than {self.rules.max_chars} characters"
        hit = self.pattern_hit(text)
        if hit:
            return hit
        for topic, pattern in self.topics.items():
            if pattern is not None and pattern.search(text):
                return f"blocked topic {topic!r}"
        return None


class Redactor:
    def __init__(self, rules: OutputRules):
        import phonenumbers  # imported here: ~0.4 s that only a guarded recipe pays
        from stdnum import iban, luhn

        self.rules = rules
        self.blocked = _words(rules.blocked_terms)
        self._phonenumbers, self._iban, self._luhn = phonenumbers, iban, luhn

    def spans(self, text: str) -> list[tuple[int, int, str]]:
        """Non-overlapping (start, end, kind) of everything to redact, earliest first; secrets
        and IBANs win over card and phone numbers found inside them."""
        kinds = set(self.rules.redact)
        found: list[tuple[int, int, str]] = []
        if "secret" in kinds:
            found += [(m.start(), m.end(), "secret") for p in SECRETS for m in p.finditer(text)]
            found += [(m.start("value"), m.end("value"), "secret") for m in SECRET_ASSIGNMENT.finditer(text)]
        if "email" in kinds:
            found += [(m.start(), m.end(), "email") for m in EMAIL.finditer(text)]
        if "iban" in kinds:
            found += [(m.start(), m.end(), "iban") for m in IBAN.finditer(text) if self._iban.is_valid(m.group())]
        if "card" in kinds:
            for m in CARD.finditer(text):
                digits = re.sub(r"\D", "", m.group())
                if 13 <= len(digits) <= 19 and self._luhn.is_valid(digits):
                    found.append((m.start(), m.end(), "card"))
        if "phone" in kinds:
            pn = self._phonenumbers
            matcher = pn.PhoneNumberMatcher(text, self.rules.phone_region, leniency=pn.Leniency.VALID)
            # a number glued to an id (ORD-2024-118833, ZX-4127) is part of that id, not a phone number
            found += [(m.start, m.end, "phone") for m in matcher if not ID_GLUE.search(text[: m.start])]
        allowed = set(self.rules.allow)
        kept: list[tuple[int, int, str]] = []
        for start, end, kind in sorted(found, key=lambda s: (s[0], -(s[1] - s[0]))):
            if text[start:end] in allowed or (kept and start < kept[-1][1]):
                continue
            kept.append((start, end, kind))
        return kept

    def redact(self, text: str) -> tuple[str, dict[str, int]]:
        """``text`` with every match replaced by the placeholder, and the count per kind."""
        counts: dict[str, int] = {}
        out, last = [], 0
        for start, end, kind in self.spans(text):
            out += [text[last:start], self.rules.placeholder.replace("{kind}", kind)]
            last = end
            counts[kind] = counts.get(kind, 0) + 1
        out.append(text[last:])
        return "".join(out), counts

    def blocked_term(self, text: str) -> str | None:
        hit = self.blocked.search(text) if self.blocked is not None else None
        return f"holds blocked term {hit.group()!r}" if hit else None


class Rules:
    """A guard section's rules, compiled once."""

    def __init__(self, config: GuardConfig):
        self.config = config
        self.input = InputChecker(config.input)
        self.output = Redactor(config.output)
