"""What is masked before text goes to an LLM provider: secrets, and (optionally) names.

Pure functions, no I/O: the ``llm_triage`` activity runs every string it sends (title, evidence
sources and texts) through :func:`redact`, then through an :class:`Anonymiser` when
``llm.anonymise_names`` is on, and restores the names in the answer with
:meth:`Anonymiser.restore`.

The secret patterns follow the formats their issuers document (and the rules of gitleaks and
GitHub secret scanning): OpenAI/Anthropic keys ``sk-...``, AWS access key ids ``AKIA``/``ASIA`` +
16, GitHub tokens ``ghp_``/``gho_``/``ghu_``/``ghs_``/``ghr_`` and ``github_pat_``, Slack tokens
``xox?-``, JSON Web Tokens (three base64url parts, the first starting ``eyJ``), HTTP
``Authorization`` values (``Bearer``/``Basic``), ``password=``-like assignments, credentials in
URLs, and PEM private keys. Over-masking is accepted; leaking is not (k8sgpt #139, #559).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

REDACTED = "[REDACTED]"
"""What a masked secret becomes."""
MIN_REDACT_VALUE_CHARS = 3
"""Shorter ``redact_values`` are not masked (masking "1" or "on" everywhere would destroy the
evidence and protects nothing a secret needs)."""

_SECRET_KEYS = (
    r"password|passwd|pwd|passphrase|secret|client[_-]?secret|token|access[_-]?token|"
    r"refresh[_-]?token|auth[_-]?token|api[_-]?key|apikey|access[_-]?key|secret[_-]?key|"
    r"private[_-]?key|credentials?"
)
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # PEM private keys, whole block.
    (
        re.compile(
            r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)",
            re.S,
        ),
        REDACTED,
    ),
    # Authorization: Bearer/Basic/Token <credential>.
    (re.compile(r"(?i)\b(bearer|basic|token)(\s+)[A-Za-z0-9._~+/=-]{8,}"), r"\1\2" + REDACTED),
    # scheme://user:password@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s:@]+:[^/\s@]+@"), r"\1" + REDACTED + "@"),
    # JSON Web Tokens.
    (re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}"), REDACTED),
    # OpenAI / Anthropic style keys (sk-..., sk-proj-..., sk-ant-...).
    (re.compile(r"\bsk-[A-Za-z0-9_-]{16,}"), REDACTED),
    # AWS access key ids.
    (re.compile(r"\b(?:AKIA|ASIA|AIDA|AROA)[0-9A-Z]{16}\b"), REDACTED),
    # GitHub tokens.
    (re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{22,})"), REDACTED),
    # Slack tokens.
    (re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"), REDACTED),
    # password=..., "api_key": "...", token: ...  (the key is kept, the value masked)
    (
        re.compile(
            r"(?i)(\b(?:[a-z0-9]+[_.-])*(?:" + _SECRET_KEYS + r")(?![a-z0-9_])[\"']?\s*[:=]\s*)"
            r"(\"[^\"]*\"|'[^']*'|[^\s,;&\"'}]+)"
        ),
        r"\1" + REDACTED,
    ),
)


@dataclass
class Redactor:
    """Masks secrets in text and counts what it masked (never keeping the values).

    Args:
        values: exact values to mask wherever they appear (the agent's env values, tokens);
            values shorter than :data:`MIN_REDACT_VALUE_CHARS` are ignored.
        patterns: also mask what looks like a secret (``password=...``, bearer tokens, keys);
            False: only ``values``.
    """

    values: list[str] = field(default_factory=list)
    count: int = 0
    patterns: bool = True

    def __post_init__(self) -> None:
        kept = {v for v in self.values if len(v.strip()) >= MIN_REDACT_VALUE_CHARS}
        # Longest first, so a value that contains another is masked whole.
        self._values = sorted(kept, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        """``text`` with every known value and secret pattern replaced by :data:`REDACTED`."""
        for value in self._values:
            n = text.count(value)
            if n:
                self.count += n
                text = text.replace(value, REDACTED)
        for pattern, replacement in _PATTERNS if self.patterns else ():
            text, n = pattern.subn(replacement, text)
            self.count += n
        return text


def redact(text: str, values: list[str] | None = None) -> str:
    """Mask secrets in ``text`` (see :class:`Redactor`).

    Args:
        text: any text about to leave the process.
        values: exact values to mask as well.

    Returns:
        The text with secrets replaced by :data:`REDACTED`.
    """
    return Redactor(list(values or []))(text)


class Anonymiser:
    """Replaces names (agent id, hosts, replicas) with placeholders, and restores them.

    The agent becomes ``agent-1``, other names ``host-1``, ``host-2`` ... (a suffix is added if
    a placeholder already appears in the text). Longer names are replaced first, so a replica
    name that contains the agent id gets its own placeholder.

    Args:
        agent_id: the incident's agent.
        names: other names to hide (hosts, replicas, nodes).
        texts: the texts that will be anonymised (to choose placeholders that do not collide).
    """

    def __init__(self, agent_id: str, names: list[str], texts: list[str]) -> None:
        corpus = "\n".join(texts)
        suffix = ""
        while any(f"{p}{suffix}-1" in corpus for p in ("agent", "host")):
            suffix = f"{suffix}x"
        self.mapping: dict[str, str] = {agent_id: f"agent{suffix}-1"}
        n = 0
        for name in names:
            if name and name not in self.mapping:
                n += 1
                self.mapping[name] = f"host{suffix}-{n}"
        self._forward = sorted(self.mapping, key=len, reverse=True)
        self._reverse = sorted(self.mapping.values(), key=len, reverse=True)
        self._back = {v: k for k, v in self.mapping.items()}

    @property
    def agent_placeholder(self) -> str:
        """The placeholder that stands for the incident's agent."""
        return next(iter(self.mapping.values()))

    def __call__(self, text: str) -> str:
        """``text`` with every name replaced by its placeholder."""
        return _replace_all(text, self._forward, self.mapping)

    def restore(self, text: str) -> str:
        """``text`` (from the model) with every placeholder replaced by the real name."""
        return _replace_all(text, self._reverse, self._back)


def _replace_all(text: str, keys: list[str], table: dict[str, str]) -> str:
    if not keys:
        return text
    pattern = re.compile("|".join(re.escape(k) for k in keys))
    return pattern.sub(lambda m: table[m.group(0)], text)
