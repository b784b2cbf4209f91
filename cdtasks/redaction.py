"""What is secret and how it is hidden: values of env-file keys whose names say secret, and the
credentials in URLs. Every output, report and record goes through `redact`."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

SECRET_WORDS = ("PASSWORD", "SECRET", "TOKEN", "KEY")  # in a key's name: its value is secret
# The user information of a URL (`https://user:token@`, `ssh://user:pw@`, `git+https://t@`):
# up to the authority's last `@`, since a password may hold an unescaped one.
_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s?#]*@")


def secret_values(raw: Mapping[str, str]) -> list[str]:
    """The values of `raw` (key -> value as written) whose keys look secret; a *_FILE key's
    value only says where a secret is (its reader adds the secret itself)."""
    return [
        v for k, v in raw.items() if any(w in k for w in SECRET_WORDS) and not k.endswith("_FILE")
    ]


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with credentials in URLs (`https://***@host/...`) and every secret of 4 or more
    characters replaced by `***`. `redact(repo)` is the repository as it may be shown or
    recorded."""
    text = _URL_CREDENTIALS.sub(r"\1***@", text)
    # Env files yield None for bare keys; shorter values would mask ordinary words.
    # Longest first, so a secret containing a shorter one is hidden whole.
    for secret in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text
