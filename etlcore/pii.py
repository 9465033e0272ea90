"""Personal data that authorised code reads back: columns declared `pii = "encrypt"`.

Such a column is staged, and kept in the warehouse (`DimCustomer.email_encrypted`), as a Fernet token
(AES-128-CBC + HMAC-SHA256, cryptography's `MultiFernet`). The keys come from one environment variable
(`[spark] pii_keys_env`, default `ETL_PII_KEYS`): comma-separated urlsafe-base64 Fernet keys, newest first.
The newest encrypts; any of them decrypts, so a new key is put in front and the old ones stay until no
token made with them is kept. Only extraction and the code that reads the values back need the variable:
the Spark job and the loader pass tokens through. docs/architecture.md, "Reading personal data back".

Errors name the variable, never a key or a value.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from connectors.secrets import secret_get

from .errors import ConfigurationError, EtlError

PII_KEYS_ENV = "ETL_PII_KEYS"

__all__ = [
    "PII_KEYS_ENV",
    "PiiDecryptError",
    "customer_emails",
    "pii_cipher",
    "pii_decrypt",
    "pii_encrypt",
]


class PiiDecryptError(EtlError):
    """A token no key of the variable decrypts (made with a key since removed, or not a token at all)."""


def pii_cipher(*, env: str = PII_KEYS_ENV, environ: Mapping[str, str] | None = None) -> MultiFernet:
    """The `MultiFernet` of the keys in `env`: the first encrypts, every one decrypts. A missing, empty or
    malformed variable is a `ConfigurationError` naming it (and which key of it, by position)."""
    text = secret_get(env, environ)
    keys = [part.strip() for part in text.split(",")]
    if not text.strip():
        raise ConfigurationError(
            f"environment variable {env} (or {env}_FILE) is not set: it holds the Fernet keys of the "
            'encrypted personal columns (pii = "encrypt"), comma-separated, newest first'
        )
    fernets = []
    for position, key in enumerate(keys, start=1):
        try:
            fernets.append(Fernet(key.encode("ascii")))
        except (ValueError, UnicodeEncodeError):
            raise ConfigurationError(
                f"environment variable {env}: key {position} of {len(keys)} is not a Fernet key "
                "(32 bytes in urlsafe base64, as Fernet.generate_key() makes)"
            ) from None
    return MultiFernet(fernets)


def pii_encrypt(text: str, *, env: str = PII_KEYS_ENV, environ: Mapping[str, str] | None = None) -> str:
    """The Fernet token of `text` under the newest key of `env` (extraction does this per column)."""
    return pii_cipher(env=env, environ=environ).encrypt(text.encode("utf-8")).decode("ascii")


def pii_decrypt(token: str, environ: Mapping[str, str] | None = None, *, env: str = PII_KEYS_ENV) -> str:
    """The clear value of a token a `pii = "encrypt"` column holds, under any key of `env`."""
    cipher = pii_cipher(env=env, environ=environ)
    return _decrypted(cipher, token, env)


def customer_emails(
    customer_keys: Iterable[str],
    using: str = "default",
    *,
    pipeline: str | None = None,
    env: str = PII_KEYS_ENV,
    environ: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """customer_key -> e-mail, decrypted from `DimCustomer.email_encrypted`, for the given customers of
    the warehouse on database `using` (of one pipeline, or of any). A customer without a token (unknown,
    a guest, or loaded before the pipeline encrypted it) is left out."""
    from warehouse.models import DimCustomer

    cipher = pii_cipher(env=env, environ=environ)
    wanted = sorted(set(customer_keys))
    members = DimCustomer.objects.using(using).exclude(email_encrypted__isnull=True)
    if pipeline is not None:
        members = members.filter(pipeline=pipeline)
    emails: dict[str, str] = {}
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        for key, token in members.filter(customer_key__in=chunk).values_list(
            "customer_key", "email_encrypted"
        ):
            emails[key] = _decrypted(cipher, token, env)
    return emails


def _decrypted(cipher: MultiFernet, token: str, env: str) -> str:
    try:
        return cipher.decrypt(token.encode("ascii")).decode("utf-8")
    except (InvalidToken, UnicodeError):
        raise PiiDecryptError(
            f"a personal-data token does not decrypt with any key of {env} (a key since removed, or not a "
            "Fernet token)"
        ) from None
