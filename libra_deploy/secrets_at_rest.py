"""The keys that encrypt the secrets the service keeps in its database: build variables, webhook secrets.

Secrets are encrypted with Fernet (the ``cryptography`` package: AES-128-CBC with an HMAC-SHA256)
under the keys of ENCRYPTION_KEY, comma-separated: the first encrypts and any of them decrypts, so a
key is rotated by putting a new one first and running ``libra-deploy reencrypt``. Without
ENCRYPTION_KEY, outside production, a key is generated once into ``$LIBRA_DATA_DIR/encryption.key``
(mode 0600, beside the database it protects, as the demo token of ``libra-deploy up``), so the
embedded default needs no setting; in production ENCRYPTION_KEY is required as soon as a secret is
stored or read.

A secret is sealed together with the row it belongs to (:func:`seal`): a ciphertext copied onto
another row (another project, another variable name, another webhook) does not open there, so
whoever can write to the database but not read the key cannot move a secret to where it is shown
or used.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from libra_deploy.config import Settings
from libra_deploy.errors import ConfigError, ServiceUnavailable
from libra_deploy.redact import register_secrets

KEY_FILE = "encryption.key"


def keyring(settings: Settings) -> MultiFernet | None:
    """The Fernet keys of the stored secrets, or None in production when ENCRYPTION_KEY is unset."""
    return _keyring(settings.encryption_keys, str(settings.data_dir), settings.environment == "production")


def require_keyring(settings: Settings, protecting: str) -> MultiFernet:
    """The Fernet keys, or the 503 ENCRYPTION_KEY_MISSING naming what needs them (``protecting``)."""
    fernet = keyring(settings)
    if fernet is None:
        raise missing_key(protecting)
    return fernet


def missing_key(protecting: str) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"{protecting} need ENCRYPTION_KEY, which the service was started without (it is required "
        "when ENVIRONMENT is production)",
        code="ENCRYPTION_KEY_MISSING",
    )


@functools.lru_cache(maxsize=8)
def _keyring(keys: tuple[str, ...], data_dir: str, production: bool) -> MultiFernet | None:
    if not keys:
        if production:
            return None
        keys = (_generated_key(Path(data_dir)),)
    # The keys are the service's own secrets: no text it shows may carry one.
    register_secrets(keys)
    return MultiFernet([Fernet(key) for key in keys])


def _generated_key(data_dir: Path) -> str:
    """The key of ``$LIBRA_DATA_DIR/encryption.key``, generated on first use."""
    path = data_dir / KEY_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        # Written to a private file (mkstemp makes it 0600) and linked into place: two processes
        # starting at once agree on one key, since the second link fails and it reads the first's.
        fd, temporary = tempfile.mkstemp(dir=data_dir, prefix=".encryption-key-")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(Fernet.generate_key().decode() + "\n")
            with contextlib.suppress(FileExistsError):
                os.link(temporary, path)
        finally:
            os.unlink(temporary)
    key = path.read_text().strip()
    try:
        Fernet(key)
    except ValueError:
        raise ConfigError("ENCRYPTION_KEY", f"is unset and {path} does not hold a Fernet key") from None
    return key


def seal(fernet: MultiFernet, value: str, bound_to: Mapping[str, str]) -> str:
    """``value`` encrypted with the first key, together with ``bound_to``: what names its row."""
    plain = json.dumps({**bound_to, "value": value}).encode()
    return fernet.encrypt(plain).decode("ascii")


def unseal(fernet: MultiFernet, token: str, bound_to: Mapping[str, str]) -> str:
    """The value sealed for ``bound_to``; ValueError when no key decrypts it or it belongs to another row.

    The error's message never holds the token or the value.
    """
    try:
        plain = json.loads(fernet.decrypt(token.encode("ascii")))
    except (InvalidToken, UnicodeEncodeError):
        # A non-ASCII value cannot be a token; its encoding error would quote a character of it.
        raise ValueError("none of the keys of ENCRYPTION_KEY decrypts it") from None
    if any(plain.get(field) != expected for field, expected in bound_to.items()):
        raise ValueError("its ciphertext belongs to another row")
    return str(plain["value"])
