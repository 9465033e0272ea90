"""Secrets from the environment: the variable holds the value, or `<NAME>_FILE` names a file holding it
(Docker and Kubernetes secrets, systemd's `LoadCredential=`, a file only the ETL user can read), so the
value need not sit in an environment that every process of that user can read in /proc. Never both: a
second source of one secret is a mistake to report, not to resolve silently (as the PostgreSQL and
MySQL container images do)."""

from __future__ import annotations

import os
from collections.abc import Mapping

from .errors import ConfigurationError

FILE_SUFFIX = "_FILE"


def secret_get(name: str, environ: Mapping[str, str] | None = None) -> str:
    """The secret `name`: `$name`, or the content of the file `$name_FILE` (without its final line
    break); "" when neither is set. Errors name the variable and the file, never a value."""
    environ = os.environ if environ is None else environ
    value, path = environ.get(name, ""), environ.get(name + FILE_SUFFIX, "")
    if value and path:
        raise ConfigurationError(
            f"environment variables {name} and {name}{FILE_SUFFIX} are both set: keep one"
        )
    if not path:
        return value
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ConfigurationError(f"{name}{FILE_SUFFIX}: cannot read {path}: {reason}") from None
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        raise ConfigurationError(f"{name}{FILE_SUFFIX}: {path} is empty")
    return text


def secret_problem(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """Why the secret `name` cannot be read (for a preflight listing every problem at once); None when it
    can."""
    try:
        if secret_get(name, environ):
            return None
    except ConfigurationError as exc:
        return str(exc)
    return f"environment variable {name} (or {name}{FILE_SUFFIX}) is not set"
