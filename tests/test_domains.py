"""Custom domains: one stored spelling, every rule proved, unique across organisations."""

from __future__ import annotations

import dataclasses
import uuid

import pytest

from libra_deploy import accounts, domains
from libra_deploy.db import transaction
from libra_deploy.errors import InvalidInput
from tests.helpers import make_tenant, text_files

ACCEPTED = [
    ("www.example.io", "www.example.io"),
    ("WWW.Example.IO", "www.example.io"),
    ("  shop.example.io  ", "shop.example.io"),
    ("example.io.", "example.io"),
    ("bücher.example.de", "xn--bcher-kva.example.de"),
    ("xn--bcher-kva.example.de", "xn--bcher-kva.example.de"),
    ("\ufb01le.example.io", "file.example.io"),  # UTS 46 maps the ligature to its letters
    ("a-b.example.co.uk", "a-b.example.co.uk"),
    ("deep.sub.example.com", "deep.sub.example.com"),
    ("shop.example.com.au", "shop.example.com.au"),  # registered under a two-label public suffix
]

REFUSED = [
    # syntax
    ("", "syntax"),
    ("https://example.io", "syntax"),
    ("example.io/path", "syntax"),
    ("user@example.io", "syntax"),
    ("example.io?x=1", "syntax"),
    ("exa mple.io", "syntax"),
    ("under_score.example.io", "syntax"),
    ("-leading.example.io", "syntax"),
    ("trailing-.example.io", "syntax"),
    ("a..b.io", "syntax"),
    ("example.io..", "syntax"),
    ("x" * 64 + ".example.io", "syntax"),
    (".".join(["a" * 60] * 5) + ".io", "syntax"),
    ("☃.net", "syntax"),
    ("singlelabel", "syntax"),
    ("1.2.3", "syntax"),
    # IP addresses
    ("10.0.0.1", "ip-address"),
    ("192.168.1.10", "ip-address"),
    ("::1", "ip-address"),
    ("[2001:db8::1]", "ip-address"),
    ("[::1]:8080", "ip-address"),
    # wildcards and ports
    ("*.example.io", "wildcard"),
    ("www.*.example.io", "wildcard"),
    ("example.io:8080", "port"),
    # reserved names
    ("localhost", "reserved"),
    ("app.localhost", "reserved"),
    ("printer.local", "reserved"),
    ("site.test", "reserved"),
    ("site.example", "reserved"),
    ("site.invalid", "reserved"),
    ("hidden.onion", "reserved"),
    ("nas.home.arpa", "reserved"),
    ("example.com", "reserved"),
    ("intranet.corp", "reserved"),
    # public suffixes themselves
    ("co.uk", "public-suffix"),
    ("kommune.no", "public-suffix"),
    ("com.au", "public-suffix"),
    ("blogspot.com", "public-suffix"),
    # platform domains and their subdomains
    ("pages.dev", "platform"),
    ("my-site.pages.dev", "platform"),
    ("x.workers.dev", "platform"),
    ("a.b.vercel.app", "platform"),
    ("me.github.io", "platform"),
    ("zepid.dev", "platform"),
    ("docs.zepid.dev", "platform"),
]


@pytest.mark.parametrize(("raw", "stored"), ACCEPTED)
def test_accepted_domains_are_stored_in_one_spelling(raw, stored):
    assert domains.normalize(raw) == stored


@pytest.mark.parametrize(("raw", "rule"), REFUSED)
def test_each_rule_refuses_what_it_should(raw, rule):
    with pytest.raises(InvalidInput) as raised:
        domains.normalize(raw)
    assert raised.value.code == "INVALID_DOMAIN"
    assert raised.value.details == {"field": "customDomain", "rule": rule}


def test_the_services_own_domains_are_platform_domains(settings):
    own = dataclasses.replace(
        settings, public_url="https://deploy.acme-hosting.io", platform_domains=("sites.acme.net",)
    )
    for raw in ("acme-hosting.io", "deploy.acme-hosting.io", "www.acme-hosting.io", "x.sites.acme.net"):
        with pytest.raises(InvalidInput) as raised:
            domains.normalize(raw, own)
        assert raised.value.details["rule"] == "platform", raw
    assert domains.normalize("acme.net", own) == "acme.net"
    # PUBLIC_URL on an address or localhost protects no domain.
    local = dataclasses.replace(settings, public_url="http://127.0.0.1:3008")
    assert domains.platform_domains(local) == domains.PLATFORM_DOMAINS


def _domain() -> str:
    return f"shop-{uuid.uuid4().hex[:10]}.example.io"


def test_a_domain_held_by_another_organisation_is_409(client, runtime):
    holder, other = make_tenant(runtime), make_tenant(runtime)
    domain = _domain()
    with transaction(runtime.sessions) as session:
        accounts.create_project(session, holder.org_id, "holder", custom_domain=domain)
    # Any spelling of the same name is the same domain.
    for spelling in (domain, domain.upper(), domain + "."):
        body = {"projectId": other.project_id, "customDomain": spelling, "initFiles": text_files({"a": "b"})}
        response = client.post("/deploy", json=body, headers=other.headers)
        assert response.status_code == 409, response.get_json()
        assert response.get_json()["error"] == "DOMAIN_TAKEN"
    created = client.post("/projects", json={"name": "again", "customDomain": domain}, headers=other.headers)
    assert created.status_code == 409
    assert created.get_json()["error"] == "DOMAIN_TAKEN"
    project = client.get(f"/projects/{other.project_id}", headers=other.headers).get_json()
    assert project["deploymentStatus"] == "idle"


def test_an_invalid_domain_is_400_naming_the_rule(client, tenant):
    for raw, rule in (("*.example.io", "wildcard"), ("site.local", "reserved"), ("co.uk", "public-suffix")):
        response = client.post(
            "/deploy", json={"projectId": tenant.project_id, "customDomain": raw}, headers=tenant.headers
        )
        assert response.status_code == 400
        error = response.get_json()
        assert error["error"] == "INVALID_DOMAIN"
        assert error["details"]["rule"] == rule
        assert rule in error["message"] or raw in error["message"]
