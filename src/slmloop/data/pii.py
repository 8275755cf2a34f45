"""PII detection and redaction: emails, phone numbers, payment cards, IBANs, IP addresses.

Patterns are deliberately conservative and every candidate is validated where a
checksum exists (Luhn for cards, ISO 7064 mod-97 for IBANs, octet ranges for
IPv4, ``ipaddress`` for IPv6), so ordinary numbers are not flagged.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["PII_TYPES", "PiiFinding", "find_pii", "redact"]


@dataclass(frozen=True)
class PiiFinding:
    kind: str
    start: int
    end: int
    text: str


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card(s: str) -> bool:
    digits = re.sub(r"[ -]", "", s)
    return 13 <= len(digits) <= 19 and _luhn(digits) and len(set(digits)) > 1


def _iban(s: str) -> bool:
    compact = s.replace(" ", "").upper()
    if not 15 <= len(compact) <= 34:
        return False
    moved = compact[4:] + compact[:4]
    numeric = "".join(str(int(c, 36)) for c in moved)
    return int(numeric) % 97 == 1


def _ipv4(s: str) -> bool:
    parts = s.split(".")
    return len(parts) == 4 and all(p.isdigit() and int(p) <= 255 and (p == "0" or not p.startswith("0")) for p in parts)


def _ipv6(s: str) -> bool:
    try:
        ipaddress.IPv6Address(s)
    except ValueError:
        return False
    return s.count(":") >= 2


def _phone(s: str) -> bool:
    digits = re.sub(r"\D", "", s)
    return 8 <= len(digits) <= 15


# (kind, pattern, validator); earlier kinds win where matches overlap
_RULES: list[tuple[str, re.Pattern[str], Callable[[str], bool]]] = [
    ("email", re.compile(r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"), lambda s: True),
    ("iban", re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b"), _iban),
    ("card", re.compile(r"(?<![\d-])\d{4}(?:[ -]?\d{4}){2}[ -]?\d{1,7}(?![\d-])"), _card),
    ("ipv4", re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])"), _ipv4),
    ("ipv6", re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){2,7}[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{1,4})*(?![\w:])"), _ipv6),
    ("phone", re.compile(r"(?<![\w+])\+?\(?\d{1,4}\)?(?:[ .-]?\(?\d{2,5}\)?){2,5}(?!\w)"), _phone),
]

PII_TYPES = tuple(kind for kind, _, _ in _RULES)


def find_pii(text: str, kinds: tuple[str, ...] = PII_TYPES) -> list[PiiFinding]:
    """Validated, non-overlapping PII spans in ``text``."""
    found: list[PiiFinding] = []
    taken: list[tuple[int, int]] = []
    for kind, pattern, valid in _RULES:
        if kind not in kinds:
            continue
        for m in pattern.finditer(text):
            s, e = m.span()
            if any(s < te and ts < e for ts, te in taken):
                continue
            if valid(m.group()):
                found.append(PiiFinding(kind, s, e, m.group()))
                taken.append((s, e))
    return sorted(found, key=lambda f: f.start)


def redact(text: str, kinds: tuple[str, ...] = PII_TYPES) -> tuple[str, Counter[str]]:
    """Replace each PII span with ``[KIND]``; return the new text and counts by kind."""
    findings = find_pii(text, kinds)
    counts: Counter[str] = Counter(f.kind for f in findings)
    for f in reversed(findings):
        text = text[: f.start] + f"[{f.kind.upper()}]" + text[f.end :]
    return text, counts
