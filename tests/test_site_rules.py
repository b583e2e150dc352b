"""_redirects and _headers: the parser on its own, then a whole site served with its rules."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select

from libra_deploy import site_rules, sites
from libra_deploy.models import DeploymentLog
from tests.helpers import deploy_completed, make_tenant


def _warnings(runtime, deployment_id: str) -> list[str]:
    """The deployment's warning lines, oldest first."""
    with runtime.sessions() as session:
        return list(
            session.scalars(
                select(DeploymentLog.message)
                .where(DeploymentLog.deployment_id == deployment_id, DeploymentLog.level == "warning")
                .order_by(DeploymentLog.id)
            )
        )


# -- the parser ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("/only-one-field", "expected `source destination [status]`"),
        ("/a /b 301 extra", "found 4 fields"),
        ("/a /b 404", "status '404' is not one of"),
        ("/a /b 301!", "status '301!' is not one of"),
        ("/a /b ²", "status '²' is not one of"),
        ("no-slash /b", "must begin with '/'"),
        ("https://other.example.io/a /b", "rules for other hosts are not supported"),
        ("/a relative/b", "must begin with '/' or https://"),
        ("/a https://example.io/b 200", "a 200 rewrite must point to a path of the site"),
        ("/a/*/b/* /c", "more than one splat"),
        ("/:id/x/:id /c", "the placeholder :id twice"),
        ("/a?x=1 /b", "cannot match a query string"),
        ("/loop /loop 301", "redirects to itself"),
        ("/" + "a" * 1000 + " /b", "longer than 1000 characters"),
    ],
)
def test_a_malformed_redirect_line_is_skipped_with_a_warning(line, reason):
    rules, warnings = site_rules.parse_redirects(f"# a comment\n/ok /fine 301\n{line}\n")
    assert [r.source.text for r in rules] == ["/ok"]
    assert len(warnings) == 1, warnings
    assert warnings[0].line == 3
    assert reason in warnings[0].message
    assert str(warnings[0]).startswith("_redirects line 3: ")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("X-Early: 1\n/a\n  X-A: 1", "comes before any URL pattern"),
        ("/a\n  X-Ok: 1\n  no colon here", "expected `Name: value`"),
        ("/a\n  X-Ok: 1\n  X-Empty:", "has no value"),
        ("/a\n  X-Ok: 1\n  Bad Name: 1", "is not a valid header name"),
        ("/a\n  X-Ok: 1\n  Content-Length: 1", "is set by the server"),
        ("/a\n  X-Ok: 1\n  X-Snow: \u2603", "characters an HTTP header cannot carry"),
        ("/a\n/b\n  X-B: 1", "no headers for /a"),
        ("relative", "expected `Name: value`"),
        ("https://example.io:8443/*\n  X-A: 1", "cannot carry a port"),
    ],
)
def test_a_malformed_headers_line_is_skipped_with_a_warning(text, reason):
    rules, warnings = site_rules.parse_headers(text)
    assert len(warnings) == 1, warnings
    assert reason in warnings[0].message
    assert all(rule.set or rule.unset for rule in rules)


@pytest.mark.parametrize("name", sorted(site_rules.ORIGIN_HEADERS))
def test_a_header_acting_on_the_whole_origin_can_be_neither_set_nor_removed(name):
    # Under /sites/ the origin is the API's: Set-Cookie would replace a visitor's session, and so on.
    rules, warnings = site_rules.parse_headers(f"/*\n  X-Ok: 1\n  {name.title()}: x=1; Path=/\n  ! {name}\n")
    assert [rule.set for rule in rules] == [(("X-Ok", "1"),)]
    assert [rule.unset for rule in rules] == [()]
    assert [w.line for w in warnings] == [3, 4], warnings
    assert all("acts on the whole origin" in w.message for w in warnings)


def test_the_limits_are_those_of_pages():
    dynamic = "\n".join(f"/d{i}/* /x/:splat" for i in range(site_rules.MAX_DYNAMIC_REDIRECTS + 5))
    rules, warnings = site_rules.parse_redirects(dynamic)
    assert len(rules) == site_rules.MAX_DYNAMIC_REDIRECTS
    assert len(warnings) == 1
    assert "more than 100 dynamic rules" in warnings[0].message

    static = "\n".join(f"/s{i} /x" for i in range(site_rules.MAX_STATIC_REDIRECTS + 2))
    rules, warnings = site_rules.parse_redirects(static)
    assert len(rules) == site_rules.MAX_STATIC_REDIRECTS
    assert len(warnings) == 2

    headers = "\n".join(f"/h{i}\n  X-N: {i}" for i in range(site_rules.MAX_HEADER_RULES + 3))
    rules, warnings = site_rules.parse_headers(headers)
    assert len(rules) == site_rules.MAX_HEADER_RULES
    assert len(warnings) == 1
    assert "more than 100 rules" in warnings[0].message


def test_header_rules_replace_then_append_then_remove_in_file_order():
    rules = site_rules.parse(
        None,
        "/*\n  Cache-Control: no-store\n  X-Tag: a\n  X-Tag: b\n"
        "/assets/*\n  X-Tag: c\n  ! X-Powered\n"
        "/assets/secret/*\n  ! X-Tag\n",
    )
    assert rules.warnings == ()
    base = [("Cache-Control", "public, max-age=0"), ("X-Powered", "libra"), ("Content-Type", "text/css")]

    def headers(path: str) -> list[tuple[str, str]]:
        return site_rules.apply_headers(base, rules.header_actions("", path))

    assert headers("/index.html") == [
        ("X-Powered", "libra"),
        ("Content-Type", "text/css"),
        ("Cache-Control", "no-store"),
        ("X-Tag", "a, b"),
    ]
    assert headers("/assets/app.css") == [
        ("Content-Type", "text/css"),
        ("Cache-Control", "no-store"),
        ("X-Tag", "a, b, c"),
    ]
    assert headers("/assets/secret/key.txt") == [("Content-Type", "text/css"), ("Cache-Control", "no-store")]


def test_splats_and_placeholders_match_as_on_pages():
    rules = site_rules.parse("/a/:one/:two /x/:two/:one 301\n/files/* /f/:splat 302\n", None)
    assert rules.redirect_for("/a/b/c")[1] == {"one": "b", "two": "c"}
    assert rules.redirect_for("/a/b") is None  # a placeholder is one whole segment
    assert rules.redirect_for("/a/b/c/d") is None
    assert rules.redirect_for("/files/") is not None  # a splat may match nothing
    assert rules.redirect_for("/files") is None
    assert rules.redirect_for("/files/x/y.txt")[1] == {"splat": "x/y.txt"}
    assert site_rules.substitute("/x/:two/:one/:unknown", {"one": "b", "two": "c d"}) == "/x/c%20d/b/:unknown"


# -- a site served with its rules ----------------------------------------------------------------

REDIRECTS = """\
# Redirects, rewrites and their precedence
/old-page.html   /about/            301
/temp            /about/
/see-other       /about/            303
/temporary       /about/            307
/permanent       /about/            308
/blog/*          /posts/:splat      301
/news/:year/:month/:slug  /articles/:year-:month/:slug
/guide/*         /docs/v2/:splat    200
/external        https://example.com/landing 301
/query           /about/?from=rule
/f*              /dynamic-f
/first           /static-first      301
/p/:id           /products/:id      301
/p/special       /special-offer     301
/dup             /one               301
/dup             /two               301
"""

HEADERS = """\
/*
  X-Frame-Options: DENY
  X-Site: all
/assets/*
  Cache-Control: public, max-age=600
  X-Site: assets
/blog/:slug
  X-Slug: :slug
/about/*
  ! X-Frame-Options
  X-Robots-Tag: noindex
https://:sub.shop-example.io/*
  X-Sub: :sub
"""

SITE = {
    "index.html": "home",
    "404.html": "missing",
    "about/index.html": "about",
    "old-page.html": "the old page",
    "blog/hello.html": "hello post",
    "docs/v2/intro.html": "intro v2",
    "assets/app.js": "js",
    "_redirects": REDIRECTS,
    "_headers": HEADERS,
}


@pytest.fixture(scope="module")
def ruled_site(runtime, worker, app):
    tenant = make_tenant(runtime)
    client = app.test_client()
    deploy_completed(client, tenant, SITE)
    return tenant


# (request, status, body or Location (relative to the site, or absolute), headers expected)
CASES = [
    ("/", 200, "home", {"X-Frame-Options": "DENY", "X-Site": "all"}),
    ("/about/", 200, "about", {"X-Frame-Options": None, "X-Robots-Tag": "noindex", "X-Site": "all"}),
    (
        "/assets/app.js",
        200,
        "js",
        {"X-Site": "all, assets", "Cache-Control": "public, max-age=600", "X-Frame-Options": "DENY"},
    ),
    # Redirects are followed even where a file exists, and carry the header rules too.
    ("/old-page.html", 301, "/about/", {"X-Frame-Options": "DENY"}),
    ("/temp", 302, "/about/", {}),
    ("/see-other", 303, "/about/", {}),
    ("/temporary", 307, "/about/", {}),
    ("/permanent", 308, "/about/", {}),
    ("/blog/hello.html", 301, "/posts/hello.html", {"X-Slug": "hello.html"}),
    ("/blog/2024/deep", 301, "/posts/2024/deep", {"X-Slug": None}),
    ("/news/2024/05/launch", 302, "/articles/2024-05/launch", {}),
    ("/news/2024/launch", 404, "missing", {"X-Frame-Options": "DENY"}),
    # A rewrite serves another path's content under the requested URL.
    ("/guide/intro.html", 200, "intro v2", {}),
    ("/guide/nope.html", 404, "missing", {}),
    ("/external", 301, "https://example.com/landing", {}),
    ("/temp?ref=mail", 302, "/about/?ref=mail", {}),
    ("/query?ref=mail", 302, "/about/?from=rule", {}),
    # A static rule beats a dynamic one above it; among dynamic rules the first wins.
    ("/first", 301, "/static-first", {}),
    ("/fun", 302, "/dynamic-f", {}),
    ("/p/42", 301, "/products/42", {}),
    ("/p/special", 301, "/special-offer", {}),
    ("/dup", 301, "/one", {}),
    # The rule files are read, never served.
    ("/_redirects", 404, "missing", {}),
    ("/_headers", 404, "missing", {}),
]


@pytest.mark.parametrize(("path", "status", "expected", "headers"), CASES, ids=[c[0] for c in CASES])
def test_rules_against_the_served_site(client, ruled_site, path, status, expected, headers):
    base = f"/sites/{ruled_site.project_id}"

    response = client.get(base + path)

    assert response.status_code == status, response.get_data(as_text=True)
    if 300 <= status < 400:
        location = response.headers["Location"]
        assert location == (expected if expected.startswith("https://") else base + expected)
    else:
        assert response.get_data(as_text=True) == expected
    for name, value in headers.items():
        assert response.headers.get(name) == value, name


def test_a_header_rule_for_a_host_applies_on_that_host_only(client, ruled_site):
    path = f"/sites/{ruled_site.project_id}/"
    assert client.get(path, headers={"Host": "beta.shop-example.io"}).headers["X-Sub"] == "beta"
    assert "X-Sub" not in client.get(path).headers


def test_a_malformed_rule_file_deploys_with_warnings_in_the_log(client, runtime, worker, tenant):
    files = {
        "index.html": f"ok {uuid.uuid4()}",
        "_redirects": "/fine /index.html 301\n/broken\n/bad /x 999\n",
        "_headers": "X-Orphan: 1\n/*\n  X-Good: yes\n",
    }
    deployment_id = deploy_completed(client, tenant, files)

    warnings = _warnings(runtime, deployment_id)
    assert len(warnings) == 3, warnings
    assert warnings[0].startswith("_redirects line 2: expected `source destination [status]`")
    assert warnings[1].startswith("_redirects line 3: status '999'")
    assert warnings[2].startswith("_headers line 1: the header X-Orphan comes before any URL pattern")
    base = f"/sites/{tenant.project_id}"
    assert client.get(base + "/fine").headers["Location"] == f"{base}/index.html"
    assert client.get(base + "/").headers["X-Good"] == "yes"


# -- headers on the API's own origin and on a custom domain ---------------------------------------

#: What a site might try against the origin it is served from, and page-level headers it may set.
ORIGIN_RULES = """\
/*
  Set-Cookie: session=lds_the_sites_own_value; Path=/; HttpOnly
  Set-Cookie2: session=x
  Clear-Site-Data: "cookies", "storage"
  Service-Worker-Allowed: /
  Strict-Transport-Security: max-age=63072000; includeSubDomains
  NEL: {"report_to": "spy", "max_age": 31536000, "success_fraction": 1.0}
  Report-To: {"group": "spy", "max_age": 31536000, "endpoints": [{"url": "https://spy.example"}]}
  Alt-Svc: h2="spy.example:443"
  Access-Control-Allow-Origin: https://spy.example
  Access-Control-Allow-Credentials: true
  Content-Security-Policy: default-src 'self'; frame-ancestors 'none'
  X-Frame-Options: DENY
/open/*
  ! Content-Security-Policy
"""


@pytest.fixture(scope="module")
def origin_site(runtime, worker, app):
    """A site whose _headers aims at the origin, deployed to a project with a custom domain."""
    tenant = make_tenant(runtime)
    client = app.test_client()
    domain = f"www-{uuid.uuid4().hex[:8]}.origin-example.io"
    created = client.post(
        "/projects", json={"name": "origin", "customDomain": domain}, headers=tenant.headers
    )
    assert created.status_code == 201, created.get_json()
    project_id = created.get_json()["id"]
    files = {"index.html": "<h1>home</h1>", "open/index.html": "open", "_headers": ORIGIN_RULES}
    deployment_id = deploy_completed(client, tenant, files, project_id=project_id)
    return project_id, deployment_id, domain


def test_rules_acting_on_the_origin_are_refused_with_warnings_in_the_log(runtime, origin_site):
    _project_id, deployment_id, _domain = origin_site
    warnings = _warnings(runtime, deployment_id)
    refused = ["Set-Cookie", "Set-Cookie2", "Clear-Site-Data", "Service-Worker-Allowed"]
    refused += ["Strict-Transport-Security", "NEL", "Report-To", "Alt-Svc"]
    reason = "acts on the whole origin, not on one answer, and cannot be set or removed; ignored"
    assert warnings == [
        f"_headers line {line}: {name} {reason}" for line, name in enumerate(refused, start=2)
    ]


SITE_POLICY = "default-src 'self'; frame-ancestors 'none'"


@pytest.mark.parametrize(
    ("path", "site_policies"),
    [("/", [SITE_POLICY]), ("/open/", []), ("/open", [SITE_POLICY]), ("/missing.js", [SITE_POLICY])],
)
def test_on_the_api_origin_no_rule_reaches_the_origin_or_lifts_the_sandbox(
    client, origin_site, path, site_policies
):
    project_id, _deployment_id, _domain = origin_site

    response = client.get(f"/sites/{project_id}{path}", headers={"Origin": "http://localhost:3000"})

    for name in sorted(site_rules.ORIGIN_HEADERS):
        assert name not in response.headers, name
    # The site's own policy is a second policy (a browser enforces both), or none after `!`; the
    # sandbox is always there, and the CORS answer is the service's: no credentials, whatever the rule.
    assert response.headers.getlist("Content-Security-Policy") == [*site_policies, sites.SANDBOX_POLICY]
    assert response.headers.getlist("Access-Control-Allow-Origin") == ["*"]
    assert "Access-Control-Allow-Credentials" not in response.headers
    assert response.headers["X-Frame-Options"] == "DENY"


def test_on_a_custom_domain_the_site_has_its_origin_and_its_page_headers_to_itself(client, origin_site):
    _project_id, _deployment_id, domain = origin_site

    response = client.get("/", headers={"Host": domain})

    assert response.get_data(as_text=True) == "<h1>home</h1>"
    assert response.headers.getlist("Content-Security-Policy") == [SITE_POLICY]
    assert response.headers["Access-Control-Allow-Origin"] == "https://spy.example"
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    # The rules are one file for both hosts: what acts on an origin is refused on this one too.
    for name in sorted(site_rules.ORIGIN_HEADERS):
        assert name not in response.headers, name
    # A custom domain's /sites/... is a path of the site, not the API's /sites/: no sandbox there.
    deep = client.get("/sites/anything", headers={"Host": domain})
    assert sites.SANDBOX_POLICY not in deep.headers.getlist("Content-Security-Policy")
