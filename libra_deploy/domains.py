"""Custom domains: normalised to one spelling, checked against the rules, unique across organisations.

A domain is stored in its IDNA ASCII form, lower case, without a trailing dot. It is refused when it
is not a host name, is an IP address, a wildcard, carries a port, is a reserved or special-use name,
is a public suffix itself (``co.uk``), or lies under a domain of the platform (``pages.dev``...).
"""

from __future__ import annotations

import ipaddress
import re
from functools import cache
from urllib.parse import urlsplit

import idna
from publicsuffixlist import PublicSuffixList
from sqlalchemy import select
from sqlalchemy.orm import Session

from libra_deploy.config import Settings
from libra_deploy.errors import Conflict, InvalidInput
from libra_deploy.models import Project

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
#: RFC 6761/2606/7686 names and the pseudo top-level domains of private networks.
RESERVED_TLDS = frozenset(
    {
        "localhost",
        "local",
        "test",
        "example",
        "invalid",
        "onion",
        "alt",
        "internal",
        "arpa",
        "lan",
        "home",
        "corp",
        "intranet",
        "localdomain",
    }
)
RESERVED_NAMES = frozenset({"example.com", "example.net", "example.org"})
#: Shared hosting, sandbox and platform domains: a project may not claim a name under them.
PLATFORM_DOMAINS = frozenset(
    {
        "pages.dev",
        "workers.dev",
        "r2.dev",
        "r2.cloudflarestorage.com",
        "cloudflare.com",
        "vercel.app",
        "netlify.app",
        "github.io",
        "e2b.app",
        "e2b.dev",
        "daytona.io",
        "daytona.work",
        "zepid.dev",
        "libra.dev",
        "libra.sh",
    }
)


@cache
def _psl() -> PublicSuffixList:
    return PublicSuffixList()


def _refuse(domain: str, rule: str, message: str) -> InvalidInput:
    return InvalidInput(
        f"customDomain {domain!r} {message}",
        code="INVALID_DOMAIN",
        details={"field": "customDomain", "rule": rule},
    )


def platform_domains(settings: Settings | None = None) -> frozenset[str]:
    """The domains no project may attach a name under: the built-in platforms, PLATFORM_DOMAINS,
    and the registered domain of the service's own PUBLIC_URL (``deploy.acme.io`` protects all of
    ``acme.io``, whose names belong to whoever runs the service)."""
    if settings is None:
        return PLATFORM_DOMAINS
    extra = set(settings.platform_domains)
    own = (urlsplit(settings.public_url).hostname or "").lower()
    if own and own != "localhost" and not _is_ip(own):
        extra.add(_psl().privatesuffix(own) or own)
    return PLATFORM_DOMAINS | extra


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def normalize(raw: str, settings: Settings | None = None) -> str:
    """Return the stored form of a custom domain, or raise InvalidInput naming the rule it breaks.

    ``settings`` adds the service's own domains (PUBLIC_URL, PLATFORM_DOMAINS) to the platform rule.
    """
    shown = raw[:300]
    host = raw.strip()
    if not host:
        raise _refuse(shown, "syntax", "is empty")
    if any(c in host for c in ("://", "/", "@", "?", "#")):
        raise _refuse(shown, "syntax", "must be a bare host name (no scheme, path or credentials)")
    if "*" in host:
        raise _refuse(shown, "wildcard", "is a wildcard; attach one host name at a time")
    if _is_ip(host) or host.startswith("["):
        raise _refuse(shown, "ip-address", "is an IP address, not a domain")
    if ":" in host:
        raise _refuse(shown, "port", "must not carry a port")
    # One trailing dot is the DNS root (``example.com.``); the stored form has none.
    host = host.removesuffix(".")
    try:
        ascii_host = idna.encode(host, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise _refuse(shown, "syntax", f"is not a valid host name ({exc})") from None
    labels = ascii_host.split(".")
    if labels[-1] in RESERVED_TLDS or ascii_host in RESERVED_NAMES or ascii_host.endswith(".home.arpa"):
        raise _refuse(shown, "reserved", "is a reserved name that cannot be served on the internet")
    if len(ascii_host) > 253 or len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        raise _refuse(shown, "syntax", "is not a valid host name")
    if labels[-1].isdigit():
        raise _refuse(shown, "syntax", "has a numeric top-level domain")
    for platform in sorted(platform_domains(settings)):
        if ascii_host == platform or ascii_host.endswith("." + platform):
            raise _refuse(shown, "platform", f"lies under {platform}, a domain of a hosting platform")
    if _psl().privatesuffix(ascii_host) is None:
        raise _refuse(shown, "public-suffix", "is a public suffix; use a name registered under it")
    return ascii_host


def domain_taken(domain: str) -> Conflict:
    return Conflict(f"the domain {domain} is attached to another project", code="DOMAIN_TAKEN")


def ensure_available(session: Session, domain: str, *, project_id: str | None) -> None:
    """Raise Conflict when another project (of any organisation) holds the domain."""
    holder = session.scalars(select(Project.id).where(Project.custom_domain == domain)).first()
    if holder is not None and holder != project_id:
        raise domain_taken(domain)


def project_for_host(session: Session, host: str) -> str | None:
    """The project whose custom domain is ``host`` (a host name, lower case, without port), if any."""
    return session.scalars(select(Project.id).where(Project.custom_domain == host)).first()
