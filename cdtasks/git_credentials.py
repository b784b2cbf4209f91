"""The credentials of a repository URL (`https://user:token@host/repo.git`) handed to git
through its environment, never its argv (any `ps` shows that) nor the checkout's `.git/config`
(it goes to the CD node and into build contexts): git gets the URL without them, and a
credential helper, configured by GIT_CONFIG_* variables for that URL's origin only, answers
with the user name and token from variables of git's own environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit, urlunsplit

# Git runs it with `sh -c`: the values come from its environment, its text has none of them.
HELPER = (
    '!f() { test "$1" = get || return 0; '
    'printf "username=%s\\npassword=%s\\n" "$CD_GIT_USERNAME" "$CD_GIT_PASSWORD"; }; f'
)


def url(repo: str) -> str:
    """The repository as git gets it in argv and keeps it as the checkout's remote: an http(s)
    URL without `user:token@`; anything else as given."""
    parts = urlsplit(repo) if repo.lower().startswith(("http://", "https://")) else None
    if not parts or "@" not in parts.netloc:
        return repo
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def environment(repo: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables that give git the URL's credentials for its origin (scheme, host, port)
    alone, after the GIT_CONFIG_* entries the caller's environment already has; {} when the
    URL carries none."""
    environ = os.environ if environ is None else environ
    clean = url(repo)
    if clean == repo:
        return {}
    parts = urlsplit(repo)
    origin = urlunsplit((parts.scheme, clean.split("/")[2], "", "", ""))
    try:
        first = int(environ.get("GIT_CONFIG_COUNT") or 0)
    except ValueError:
        first = 0
    # The empty helper first: no helper of the user's configuration is asked (or told) for it.
    entries = [(f"credential.{origin}.helper", ""), (f"credential.{origin}.helper", HELPER)]
    env = {
        "GIT_CONFIG_COUNT": str(first + len(entries)),
        "CD_GIT_USERNAME": unquote(parts.username or ""),
        "CD_GIT_PASSWORD": unquote(parts.password or ""),
    }
    for i, (key, value) in enumerate(entries, start=first):
        env[f"GIT_CONFIG_KEY_{i}"], env[f"GIT_CONFIG_VALUE_{i}"] = key, value
    return env
