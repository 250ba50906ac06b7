"""The product policy apimon writes on Azure API Management, and how it reads one back.

apimon owns exactly this shape (comments are added for humans; comments never count)::

    <policies>
        <inbound>
            <base />
            <validate-jwt header-name="Authorization" ...>      products.<id>.auth jwt (see token_check)
                <openid-config url="ISSUER/.well-known/openid-configuration" />
                <audiences><audience>AUD</audience></audiences>
                <issuers><issuer>ISSUER</issuer></issuers>
                <required-claims>                                scopes, when the product has some
                    <claim name="scope" match="all" separator=" "><value>read</value>...</claim>
                </required-claims>
            </validate-jwt>
            <rate-limit calls="R" renewal-period="1" />        rate_limit.rate R per second
            <quota calls="N" renewal-period="86400" />         quota day / week (604800) / month (2592000)
        </inbound>
        <backend><base /></backend>
        <outbound><base /></outbound>
        <on-error><base /></on-error>
    </policies>

Policies are compared parsed (whitespace, comments, attribute order and quoting ignored): APIM returns
them re-formatted, and that is never a difference. Anything else in a live policy (other elements, extra
attributes, a missing ``<base />``) is *foreign*: reported by name and never overwritten unless forced.
Pure functions, no I/O and no Azure imports.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from urllib.parse import urlsplit
from xml.sax.saxutils import escape, quoteattr

from ...model import JwtIssuer, Product, Quota, RateLimit

SECTIONS = ("inbound", "backend", "outbound", "on-error")
QUOTA_SECONDS = {"day": 86_400, "week": 604_800, "month": 2_592_000}
PERIOD_OF_SECONDS = {v: k for k, v in QUOTA_SECONDS.items()}
RATE_WINDOW_SECONDS = 1
LIMIT_ATTRS = frozenset({"calls", "renewal-period"})
MARKER_COMMENT = " managed by apimon: validate-jwt, rate-limit and quota come from the apimon plan "


#: what validate-jwt answers a caller without a valid token (the local gateway's bearer failures are 401 too)
JWT_FAILED_CODE = "401"
JWT_FAILED_MESSAGE = "Unauthorized: the bearer token is missing or invalid"
#: the local gateway's leeway on exp/nbf, in seconds: the same tokens pass on both
JWT_CLOCK_SKEW = "60"
JWT_ATTRS = {"header-name": "Authorization", "failed-validation-httpcode": JWT_FAILED_CODE,
             "failed-validation-error-message": JWT_FAILED_MESSAGE, "require-scheme": "Bearer",
             "clock-skew": JWT_CLOCK_SKEW}
#: issuers whose access tokens carry their scopes in `scp` (Microsoft Entra ID: v1 and v2 endpoints, External ID,
#: B2C); every other issuer in `scope` (RFC 9068 JWT access tokens, Auth0, Okta, Cognito, the local gateway)
_SCP_HOSTS = ("login.microsoftonline.com", "sts.windows.net", "login.microsoftonline.us",
              "login.partner.microsoftonline.cn")
_SCP_SUFFIXES = (".ciamlogin.com", ".b2clogin.com")
JWKS_HINT = "apimon: jwks_uri "


def scope_claim(issuer: str) -> str:
    host = (urlsplit(issuer).hostname or "").lower()
    return "scp" if host in _SCP_HOSTS or host.endswith(_SCP_SUFFIXES) else "scope"


def discovery_url(issuer: str) -> str:
    """The issuer's OpenID Provider configuration document (OpenID Connect Discovery 1.0, section 4: the issuer
    without a terminating "/", then "/.well-known/openid-configuration")."""
    return issuer.rstrip("/") + "/.well-known/openid-configuration"


@dataclass(frozen=True)
class TokenCheck:
    """The validate-jwt element of a product: the plan's jwt issuer and audience, and its scopes."""

    issuer: str
    audience: str
    scopes: tuple[str, ...] = ()
    jwks_uri: str = ""  # not given to API Management (see generate_policy); kept in a comment for import

    @property
    def claim(self) -> str:
        return scope_claim(self.issuer)


def token_check(product: Product) -> TokenCheck | None:
    """What API Management checks of a product's bearer tokens: only jwt is expressible (an external
    issuer's tokens); oauth2 needs tokens the gateway issues, which API Management does not do."""
    if not product.accepts("jwt") or product.jwt is None:
        return None
    j = product.jwt
    return TokenCheck(j.issuer, j.audience, tuple(sorted(set(product.scopes))), j.jwks_uri)


def as_held(p: Product) -> Product:
    """A product's credentials as API Management holds them, for comparison: the subscription key always
    (apimon's products require one), plus jwt when the product has an issuer; oauth2 and mtls are not
    expressible (validation warns) and scopes are kept only inside validate-jwt."""
    from dataclasses import replace

    t = token_check(p)
    if t is None:
        return replace(p, auth=("api_key",), scopes=(), jwt=None)
    return replace(p, auth=("api_key", "jwt"), scopes=t.scopes)


def _token_lines(t: TokenCheck) -> list[str]:
    # API Management takes an issuer's signing keys in one of two documented ways: <issuer-signing-keys> (the
    # keys themselves, inline: Base64, n/e or an uploaded certificate id; they would be frozen at apply time
    # and break at the issuer's next key rotation) or <openid-config url> (an OpenID Provider configuration
    # document; its `jwks_uri` is fetched and cached by API Management, refreshed hourly and on an unknown
    # `kid`). There is no element for a bare JWKS URL: `openid-config` must answer OIDC discovery metadata
    # ("The response should be according to specs ... #ProviderMetadata", validate-jwt policy reference). So
    # apimon points it at the issuer's discovery document, whose `jwks_uri` is the plan's for every
    # OIDC-compliant issuer (Entra ID, Auth0, Okta, Cognito, Google, Keycloak...); the plan's jwks_uri is kept
    # in a comment only, for `apimon import`. The issuer is listed too (<issuers>): the discovery document
    # names it, but an explicit list makes the check not depend on the document.
    attrs = "".join(f" {k}={quoteattr(v)}" for k, v in JWT_ATTRS.items())
    out = [f"\t\t<validate-jwt{attrs}>"]
    if t.jwks_uri and "--" not in t.jwks_uri and not t.jwks_uri.endswith("-"):
        out.append(f"\t\t\t<!-- {JWKS_HINT}{t.jwks_uri} (API Management reads the keys from openid-config) -->")
    out += [f"\t\t\t<openid-config url={quoteattr(discovery_url(t.issuer))} />",
            "\t\t\t<audiences>", f"\t\t\t\t<audience>{escape(t.audience)}</audience>", "\t\t\t</audiences>",
            "\t\t\t<issuers>", f"\t\t\t\t<issuer>{escape(t.issuer)}</issuer>", "\t\t\t</issuers>"]
    if t.scopes:
        out += ["\t\t\t<required-claims>", f'\t\t\t\t<claim name="{t.claim}" match="all" separator=" ">',
                *(f"\t\t\t\t\t<value>{escape(s)}</value>" for s in t.scopes),
                "\t\t\t\t</claim>", "\t\t\t</required-claims>"]
    out.append("\t\t</validate-jwt>")
    return out


def generate_policy(rate_limit: RateLimit | None, quota: Quota | None, token: TokenCheck | None = None) -> str:
    """The full policy document for a product's token check and limits (burst is not expressible and not
    written). The token is checked first: a call without a valid token uses none of the quota."""
    inbound = ["\t\t<base />"]
    if token is not None:
        inbound += _token_lines(token)
    if rate_limit is not None:
        inbound.append(f'\t\t<rate-limit calls="{rate_limit.rate * RATE_WINDOW_SECONDS}" '
                       f'renewal-period="{RATE_WINDOW_SECONDS}" />')
    if quota is not None:
        inbound.append(f'\t\t<quota calls="{quota.limit}" renewal-period="{QUOTA_SECONDS[quota.period]}" />')
    lines = ["<policies>", f"\t<!--{MARKER_COMMENT}-->", "\t<inbound>", *inbound, "\t</inbound>"]
    for section in SECTIONS[1:]:
        lines += [f"\t<{section}>", "\t\t<base />", f"\t</{section}>"]
    lines.append("</policies>")
    return "\n".join(lines)


def product_policy(p: Product) -> str | None:
    """The policy a product needs, or None when it needs none (no token check, no limits)."""
    token = token_check(p)
    if p.rate_limit is None and p.quota is None and token is None:
        return None
    return generate_policy(p.rate_limit, p.quota, token)


# ---------------------------------------------------------------- semantic comparison

def canonical(xml: str) -> tuple:
    """A comparable form of a policy document: comments, whitespace-only text and attribute order gone."""
    return _canon(ET.fromstring(xml.strip()))


def _canon(el: ET.Element) -> tuple:
    text = (el.text or "").strip()
    children = tuple(_canon(c) for c in el if isinstance(c.tag, str))
    tails = "".join((c.tail or "").strip() for c in el)
    return (el.tag, tuple(sorted(el.attrib.items())), text + tails, children)


def policies_equal(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return a is b
    try:
        return canonical(a) == canonical(b)
    except ET.ParseError:
        return False


# ---------------------------------------------------------------- reading a live policy

@dataclass
class PolicyReading:
    """What apimon understands of a live product policy."""

    rate_limit: tuple[int, int] | None = None  # (calls, renewal-period seconds)
    quota: tuple[int, int] | None = None  # (calls, renewal-period seconds)
    token: TokenCheck | None = None  # the validate-jwt element, when it is apimon's shape
    foreign: list[str] = field(default_factory=list)  # what apimon did not write, named for the user
    notes: list[str] = field(default_factory=list)  # limits apimon reads but cannot map exactly

    def model_auth(self) -> dict:
        """Product fields of the token check: auth (API Management always requires the subscription key: see
        the provider's module docstring), the jwt issuer and the scopes."""
        t = self.token
        if t is None:
            return {}
        # the jwks_uri: the plan's, kept in apimon's comment; without it, the issuer's conventional JWKS path
        # (never compared on Azure: API Management reads the keys from the discovery document)
        jwks = t.jwks_uri or t.issuer.rstrip("/") + "/.well-known/jwks.json"
        return {"auth": ("api_key", "jwt"), "jwt": JwtIssuer(t.issuer, jwks, t.audience), "scopes": t.scopes}

    @property
    def model_rate_limit(self) -> RateLimit | None:
        if self.rate_limit is None:
            return None
        calls, period = self.rate_limit
        if period <= 0 or calls % period:
            return None
        rate = calls // period
        return RateLimit(rate=rate, burst=rate)

    @property
    def model_quota(self) -> Quota | None:
        if self.quota is None:
            return None
        calls, period = self.quota
        name = PERIOD_OF_SECONDS.get(period)
        return Quota(limit=calls, period=name) if name else None  # type: ignore[arg-type]


def read_policy(xml: str | None) -> PolicyReading:
    reading = PolicyReading()
    if xml is None or not xml.strip():
        return reading
    try:
        root = ET.fromstring(xml.strip(), parser=ET.XMLParser(target=ET.TreeBuilder(insert_comments=True)))
    except ET.ParseError as exc:
        reading.foreign.append(f"unparsable policy XML ({exc})")
        return reading
    if root.tag != "policies":
        reading.foreign.append(f"<{root.tag}> root element")
        return reading
    seen: set[str] = set()
    for section in root:
        if not isinstance(section.tag, str):
            continue
        if section.tag not in SECTIONS or section.tag in seen:
            reading.foreign.append(f"<{section.tag}>" if section.tag not in SECTIONS else f"second <{section.tag}>")
            continue
        seen.add(section.tag)
        _read_section(section, reading)
    for missing in (s for s in SECTIONS if s not in seen):
        reading.foreign.append(f"{missing} without <base /> (section missing)")
    _check_limits(reading)
    return reading


def _read_section(section: ET.Element, reading: PolicyReading) -> None:
    name = section.tag
    if section.attrib:
        reading.foreign.append(f"{name}@{','.join(sorted(section.attrib))}")
    has_base = False
    for el in section:
        if not isinstance(el.tag, str):
            continue
        where = f"{name}/{el.tag}"
        if el.tag == "base" and not has_base and not el.attrib and not len(el):
            has_base = True
        elif name == "inbound" and el.tag == "validate-jwt":
            if reading.token is not None or reading.rate_limit is not None or reading.quota is not None:
                reading.foreign.append(f"{where} (a second one, or after the limits)")
                continue
            reading.token = _read_jwt(el, where, reading.foreign)
        elif name == "inbound" and el.tag in ("rate-limit", "quota"):
            slot = "rate_limit" if el.tag == "rate-limit" else "quota"
            if getattr(reading, slot) is not None:
                reading.foreign.append(f"{where} (a second one)")
                continue
            extra = sorted(set(el.attrib) - LIMIT_ATTRS)
            if extra:
                reading.foreign.append(f"{where}@{','.join(extra)}")
            if any(isinstance(c.tag, str) for c in el):
                reading.foreign.append(f"{where} child elements ({', '.join(sorted({c.tag for c in el}))})")
            try:
                setattr(reading, slot, (int(el.attrib["calls"]), int(el.attrib["renewal-period"])))
            except (KeyError, ValueError):
                reading.foreign.append(f"{where} without whole-number calls and renewal-period")
        else:
            reading.foreign.append(where)
    if not has_base:
        reading.foreign.append(f"{name} without <base />")


def _check_limits(reading: PolicyReading) -> None:
    if reading.rate_limit is not None and reading.model_rate_limit is None:
        calls, period = reading.rate_limit
        reading.notes.append(f"the live rate-limit allows {calls} calls per {period} s, which is not a whole "
                             "number of calls per second; apimon reads it as no rate limit and apply "
                             "replaces it")
    if reading.quota is not None and reading.model_quota is None:
        calls, period = reading.quota
        reading.notes.append(f"the live quota renews every {period} s, not after a day (86400), a week (604800) "
                             "or a month (2592000); apimon reads it as no quota and apply replaces it")


def _elements(el: ET.Element) -> list[ET.Element]:
    return [c for c in el if isinstance(c.tag, str)]


_JWT_CHILDREN = ["openid-config", "audiences", "issuers"]


def _read_jwt(el: ET.Element, where: str, foreign: list[str]) -> TokenCheck | None:
    """A validate-jwt element of apimon's shape as a TokenCheck; anything else is foreign (named), and then
    apimon reads no token check from it (a plan that has one replaces it, with --force-policy)."""
    before = len(foreign)
    if dict(el.attrib) != JWT_ATTRS:
        extra = sorted(set(el.attrib) ^ set(JWT_ATTRS)) or sorted(k for k in el.attrib if el.attrib[k] != JWT_ATTRS[k])
        foreign.append(f"{where}@{','.join(extra)}")
    hint = next((c.text.strip()[len(JWKS_HINT):].split(" ", 1)[0] for c in el
                 if c.tag is ET.Comment and (c.text or "").strip().startswith(JWKS_HINT)), "")
    kids = _elements(el)
    tags = [c.tag for c in kids]
    if tags not in (_JWT_CHILDREN, [*_JWT_CHILDREN, "required-claims"]):
        foreign.append(f"{where} children ({', '.join(tags) or 'none'})")
        return None
    config, audiences, issuers = kids[0], kids[1], kids[2]

    def one(parent: ET.Element, tag: str) -> str | None:
        items = _elements(parent)
        if parent.attrib or len(items) != 1 or items[0].tag != tag or items[0].attrib or _elements(items[0]):
            foreign.append(f"{where}/{parent.tag} (apimon writes exactly one <{tag}>)")
            return None
        return (items[0].text or "").strip()

    audience, issuer = one(audiences, "audience"), one(issuers, "issuer")
    if issuer is not None and (set(config.attrib) != {"url"} or config.attrib["url"] != discovery_url(issuer)):
        foreign.append(f"{where}/openid-config (not the issuer's discovery document {discovery_url(issuer)})")
    scopes: tuple[str, ...] = ()
    if len(kids) == 4:
        claims = _elements(kids[3])
        claim = claims[0] if len(claims) == 1 else None
        wanted = {"name": scope_claim(issuer or ""), "match": "all", "separator": " "}
        if claim is None or claim.tag != "claim" or dict(claim.attrib) != wanted or kids[3].attrib:
            foreign.append(f"{where}/required-claims (apimon writes one claim {wanted['name']} with match=all, "
                           "separator=' ')")
        else:
            values = _elements(claim)
            if not values or any(v.tag != "value" or v.attrib or _elements(v) for v in values):
                foreign.append(f"{where}/required-claims/claim (apimon writes <value> elements only)")
            else:
                scopes = tuple(sorted({(v.text or "").strip() for v in values}))
    if len(foreign) > before or issuer is None or audience is None:
        return None
    return TokenCheck(issuer, audience, scopes, hint)
