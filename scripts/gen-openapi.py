# Writes docs/openapi.json, the hand-written OpenAPI description of the control-plane API
# (udn-bins/src/api/routes.rs). Edit here, run `python3 scripts/gen-openapi.py`; the test
# openapi_document_describes_every_route fails when a route is missing.
import json
E = {"$ref": "#/components/responses/Error"}
def op(summary, tag, req=None, ok="200", okschema=None, extra=None, params=None, auth=True):
    o = {"summary": summary, "tags": [tag], "responses": {}}
    if req: o["requestBody"] = {"required": True, "content": {"application/json": {"schema": req}}}
    o["responses"][ok] = {"description": "success"}
    if okschema: o["responses"][ok]["content"] = {"application/json": {"schema": okschema}}
    for code in (["401","403"] if auth else []) + ["404","422"]:
        o["responses"][code] = E
    if extra: o["responses"].update(extra)
    if params: o["parameters"] = params
    if not auth: o["security"] = []
    return o
R = lambda n: {"$ref": f"#/components/schemas/{n}"}
A = lambda s: {"type": "array", "items": s}
P = lambda n, desc, t="string": {"name": n, "in": "path", "required": True, "description": desc, "schema": {"type": t}}
Q = lambda n, desc, t="string": {"name": n, "in": "query", "required": False, "description": desc, "schema": {"type": t}}
host = P("hostname", "The hostname")
cust = Q("customer", "Admin only: restrict to one customer (a customer may only name itself)")
obj = {"type": "object", "additionalProperties": True}
hours = Q("hours", "Without `from`: the last N hours before `to`, 1..43920 (default 24)", "integer")
frm = Q("from", "Start of the range: RFC 3339 (`2026-12-01T00:00:00Z`) or a local date-time (`2026-12-01T00:00`) read in `tz`", "string")
to = Q("to", "End of the range (exclusive), same forms; default the end of the last complete minute", "string")
tz = Q("tz", "IANA time zone of the answer's times and of local `from`/`to` (default UTC)", "string")
hostq = Q("host", "One CDN or GTM hostname (default all)", "string")
fmt = Q("format", "`json` (default) or `csv`; `Accept: text/csv` also asks for CSV", "string")
series = {"type": "object", "required": ["from", "to", "from_ms", "to_ms", "tz", "granularity", "step_ms", "points"], "properties": {
  "customer": {"type": ["string", "null"]}, "host": {"type": ["string", "null"]},
  "from": {"type": "string", "format": "date-time", "description": "Start of the range covered (widened to whole buckets), RFC 3339 in `tz`"},
  "to": {"type": "string", "format": "date-time", "description": "End of the range covered (exclusive), RFC 3339 in `tz`"},
  "from_ms": {"type": "integer"}, "to_ms": {"type": "integer"}, "tz": {"type": "string"},
  "granularity": {"type": "string", "enum": ["minute", "hour", "day"], "description": "minute up to 2 days, hour up to 90 days, day beyond"},
  "step_ms": {"type": "integer"}, "points": A(obj)}}
csv = {"200": {"description": "the series as JSON, or as CSV (`format=csv`)", "content": {"application/json": {"schema": series}, "text/csv": {"schema": {"type": "string"}}}}, "400": E}
tparams = [cust, frm, to, tz, hours, hostq, fmt]
paths = {
 "/health": {"get": op("Liveness", "meta", auth=False)},
 "/v1/openapi.json": {"get": op("This document", "meta", auth=False)},
 "/v1/auth/login": {"post": op("Log in; sets the HttpOnly SameSite=Strict session cookie `udn_session` and returns the CSRF token to send as `X-CSRF-Token` on changes", "auth", R("Login"), okschema=obj, extra={"429": E}, auth=False)},
 "/v1/auth/logout": {"post": op("End the session", "auth", ok="204")},
 "/v1/auth/token": {"post": op("Log in and issue an API token named `login` with every scope for a year (HTTPS only; `POST /v1/tokens` chooses name, scopes and expiry)", "auth", R("Login"), okschema=obj, extra={"429": E}, auth=False)},
 "/v1/me/password": {"post": op("Change the caller's password (login session only; the current password goes through the login limiter); ends every other session of the user (HTTPS only)", "auth", {"type":"object","required":["current","new"],"properties":{"current":{"type":"string","format":"password"},"new":{"type":"string","format":"password","minLength":8,"maxLength":1024}}}, ok="204", extra={"429": E})},
 "/v1/tokens": {"get": op("The caller's API tokens, without secrets (login session only, HTTPS only)", "auth", okschema=A(R("ApiToken"))), "post": op("Create an API token; the secret is in this answer only (login session only, HTTPS only)", "auth", R("NewToken"), ok="201", okschema=R("CreatedToken"), extra={"409": E})},
 "/v1/tokens/{id}": {"parameters": [P("id", "Token id", "integer")], "delete": op("Revoke one of the caller's API tokens", "auth", ok="204")},
 "/v1/me": {"get": op("The caller and its CSRF token", "auth", okschema=obj)},
 "/v1/users": {"get": op("List users (admin; HTTPS only)", "users", okschema=A(R("User"))), "post": op("Create a user (admin; HTTPS only)", "users", R("NewUser"), ok="201", okschema=R("User"))},
 "/v1/users/{name}": {"parameters": [P("name", "Login name")], "delete": op("Delete a user with their sessions and API tokens: an admin any other user, a customer's user another user of the same customer (HTTPS only)", "users", ok="204", extra={"409": E})},
 "/v1/customers": {"get": op("Customers the caller may see", "customers", okschema=A(R("Customer"))), "post": op("Create a customer (admin)", "customers", R("Customer"), ok="201")},
 "/v1/customers/{name}": {"parameters": [P("name", "Customer name")], "get": op("One customer", "customers", okschema=R("Customer")), "put": op("Change the display name", "customers", R("Customer")), "delete": op("Delete a customer (admin)", "customers", ok="204")},
 "/v1/cdn": {"get": op("CDN hostnames", "cdn", okschema=A(R("CdnConfig")), params=[cust]), "post": op("Add a CDN hostname (customer defaults to the caller's)", "cdn", R("CdnConfig"), ok="201")},
 "/v1/cdn/{hostname}": {"parameters": [host], "get": op("One CDN hostname", "cdn", okschema=R("CdnConfig")), "put": op("Replace a CDN hostname", "cdn", R("CdnConfig")), "delete": op("Remove a CDN hostname", "cdn", ok="204")},
 "/v1/gtm": {"get": op("GTM hostnames with their targets' sites and addresses", "gtm", okschema=A(R("GtmView")), params=[cust]), "post": op("Add a GTM hostname", "gtm", R("GtmConfig"), ok="201", okschema=R("GtmView"))},
 "/v1/gtm/{hostname}": {"parameters": [host], "get": op("One GTM hostname", "gtm", okschema=R("GtmView")), "put": op("Replace a GTM hostname (weights, standby, persistence, weighting, TTL...)", "gtm", R("GtmConfig"), okschema=R("GtmView")), "delete": op("Remove a GTM hostname", "gtm", ok="204")},
 "/v1/gtm/{hostname}/addresses": {"parameters": [host], "post": op("Publish an address (creating its server in an origin site) or an existing server", "gtm", R("NewAddress"), ok="201", okschema=R("GtmView"))},
 "/v1/gtm/{hostname}/addresses/{address}": {"parameters": [host, P("address", "An address or server name")], "put": op("Change a target's weight", "gtm", {"type":"object","required":["weight"],"properties":{"weight":{"type":"integer","minimum":0}}}, okschema=R("GtmView")), "delete": op("Stop publishing an address", "gtm", okschema=R("GtmView"))},
 "/v1/gtm/{hostname}/standby": {"parameters": [host], "put": op("Set the hidden standby addresses", "gtm", {"type":"object","required":["standby"],"properties":{"standby":A({"type":"string","format":"ip"})}}, okschema=R("GtmView"))},
 "/v1/gtm/{hostname}/monitor": {"parameters": [host], "get": op("How the hostname's service is monitored", "gtm", okschema=R("ServiceConfig")), "put": op("Change monitoring (creates the hostname's own service `mon-<hostname>`)", "gtm", R("ServiceConfig"), okschema=R("ServiceConfig"))},
 "/v1/static-mappings": {"get": op("Static mappings of the caller's hostnames (with their index)", "gtm", okschema=A(obj)), "post": op("Add a static mapping (customers must name their hostnames)", "gtm", R("StaticMapping"), ok="201")},
 "/v1/static-mappings/{index}": {"parameters": [P("index", "Index in the list", "integer")], "delete": op("Remove a static mapping", "gtm", ok="204")},
 "/v1/config": {"get": op("Current network configuration snapshot (agents with a bearer token, admins). Conditional GET with If-None-Match (ETag `\"v<version>\"`) answers 304; `since=V&wait=S` long-polls up to S (max 60) seconds for a version other than V", "config", okschema=R("ConfigSnapshot"), params=[Q("since","The version the caller has","integer"), Q("wait","Seconds to wait for a newer version","integer"), Q("format","`toml` for TOML text")], extra={"304": {"description": "not modified"}}), "put": op("Replace the whole configuration (admin); `base` guards against lost updates", "config", {"type":"object","required":["config"],"properties":{"base":{"type":"integer"},"config":R("Config")}}, okschema={"type":"object","properties":{"version":{"type":"integer"}}}, extra={"409": E})},
 "/v1/config/versions/{version}": {"parameters": [P("version", "Version number", "integer")], "get": op("One past configuration version (admin)", "config", okschema=R("ConfigSnapshot"))},
 "/v1/purge": {"get": op("Recent purges with their propagation", "purge", okschema=A(R("PurgeView")), params=[cust, Q("limit","Max entries (default 50)","integer")]), "post": op("Invalidate a URL, directory (prefix) or domain on every edge; answers at once with the sequence number, delivery continues in the background and retries edges that are down", "purge", R("PurgeRequest"), ok="202", okschema=R("PurgeView"))},
 "/v1/purge/{seq}": {"parameters": [P("seq", "Sequence number", "integer")], "get": op("One purge and how many edges applied it", "purge", okschema=R("PurgeView"))},
 "/v1/prefill": {"post": op("Ask every edge to fetch URLs into its cache; numbered and retried like purges (delivered after pending purges)", "purge", {"type":"object","required":["urls"],"properties":{"urls":A({"type":"string"})}}, ok="202", okschema=obj)},
 "/v1/live-events": {
  "get": op("The caller's live events (an admin's: all, or one customer's), newest start first, each with its prefill's progress per edge", "purge", okschema=A(R("LiveEvent")), params=[cust, Q("limit", "At most this many (default 50, at most 500)", "integer")]),
  "post": op("Register a live event: every edge prefills its playlist and segments from 10 minutes before the start until the end; at most 20 events that have not ended per customer (409 beyond)", "purge", {"type":"object","required":["hostname","playlist_url","starts_at"],"additionalProperties":False,"properties":{"hostname":{"type":"string","description":"A verified CDN hostname of the caller's"},"playlist_url":{"type":"string","description":"An HLS playlist (.m3u8) URL on that hostname, at most 2048 bytes"},"starts_at":{"type":"integer","description":"Start, ms since the epoch: at most 5 minutes past, at most a year ahead"},"ends_at":{"type":"integer","description":"End, ms since the epoch: after the start, at most 7 days later (default a day after the start)"},"max_segments":{"type":"integer","minimum":1,"maximum":100,"description":"Segments each edge prefills, all variants together (default 10)"}}}, ok="201", okschema=R("LiveEvent"), extra={"409": E})},
 "/v1/prefill/{seq}": {"parameters": [P("seq", "Sequence number", "integer")], "get": op("One prefill and how many edges accepted it", "purge", okschema=obj)},
 "/v1/pagecheck": {"post": op("Run a page check from the chosen probe locations", "tests", R("PageCheckRequest"), okschema=R("PageCheckAnswer"))},
 "/v1/traffic/cdn": {"get": op("CDN bytes and hits per bucket (minute, hour or day by the range's length)", "traffic", okschema=series, extra=csv, params=tparams)},
 "/v1/traffic/cdn/locations": {"get": op("CDN bytes and hits per POP over the range", "traffic", okschema=series, extra=csv, params=tparams)},
 "/v1/traffic/gtm": {"get": op("GTM answers per bucket, hostname and address", "traffic", okschema=series, extra=csv, params=tparams)},
 "/v1/traffic/gtm/locations": {"get": op("GTM answers per answering location and address over the range", "traffic", okschema=series, extra=csv, params=tparams)},
 "/v1/streaming": {"get": op("Streaming statistics (HLS, DASH) per stream, per minute and stream, and top viewers (at most 7 days)", "traffic", okschema=obj, params=[x for x in tparams if x.get("name") != "format"])},
 "/v1/invoices": {"get": op("Issued invoices", "invoices", okschema=A(R("InvoiceSummary")), params=[cust])},
 "/v1/invoices/{id}": {"parameters": [P("id", "Invoice id", "integer")], "get": op("One invoice with its HTML body", "invoices", okschema=obj)},
 "/v1/invoices/{id}/html": {"parameters": [P("id", "Invoice id", "integer")], "get": op("The invoice as HTML", "invoices")},
 "/v1/billing/runs": {"post": op("Admin: a billing run for a period (2026-11, 2026-Q4, 2026-W48, 2026-11-26T13, 2026); issues gap-free numbered invoices, and nothing new when the period was billed already", "invoices", {"type": "object", "required": ["period"], "properties": {"period": {"type": "string"}}}, okschema=obj)},
}
ip = {"type": "string", "description": "IPv4 or IPv6 address"}
schemas = {
 "Error": {"type":"object","required":["error"],"properties":{"error":{"type":"string"},"errors":A({"type":"object","properties":{"field":{"type":"string","description":"Path of the field at fault, e.g. `gtm[0].targets[1].server` or `urls[2]`"},"message":{"type":"string"}}})}},
 "Login": {"type":"object","required":["username","password"],"properties":{"username":{"type":"string"},"password":{"type":"string","format":"password"}}},
 "LiveEvent": {"type":"object","required":["id","customer","hostname","playlist_url","starts_at","max_segments","created_by","created_at","prefilled","total","edges"],"properties":{"id":{"type":"integer"},"customer":{"type":"string"},"hostname":{"type":"string"},"playlist_url":{"type":"string"},"starts_at":{"type":"integer"},"ends_at":{"type":["integer","null"]},"max_segments":{"type":"integer"},"created_by":{"type":"string"},"created_at":{"type":"integer"},"prefilled":{"type":"integer","description":"Edges that prefilled it"},"total":{"type":"integer","description":"Edges it goes to"},"edges":A(obj)}},
 "Scope": {"enum":["read","purge","config","billing"],"description":"read: GETs outside billing; purge: POST /v1/purge, /v1/prefill and /v1/live-events; config: every other change (CDN, GTM, customers, config, page checks); billing: /v1/invoices and /v1/billing"},
 "NewToken": {"type":"object","required":["name","scopes","expires_in_days"],"properties":{"name":{"type":"string","minLength":1,"maxLength":64},"scopes":A(R("Scope")),"expires_in_days":{"type":"integer","minimum":1,"maximum":365}}},
 "ApiToken": {"type":"object","properties":{"id":{"type":"integer"},"name":{"type":"string"},"scopes":A(R("Scope")),"created_at":{"type":"integer","description":"ms since the epoch"},"expires_at":{"type":"integer"},"last_used":{"type":["integer","null"],"description":"updated at most once a minute"}}},
 "CreatedToken": {"allOf":[R("ApiToken"),{"type":"object","properties":{"secret":{"type":"string","description":"`udn_` and 64 hex digits; send as `Authorization: Bearer <secret>`; stored only as its SHA-256"}}}]},
 "User": {"type":"object","properties":{"id":{"type":"integer"},"username":{"type":"string"},"role":{"enum":["admin","customer"]},"customer":{"type":["string","null"]}}},
 "NewUser": {"type":"object","required":["username","password","role"],"properties":{"username":{"type":"string"},"password":{"type":"string","minLength":8,"maxLength":1024},"role":{"enum":["admin","customer"]},"customer":{"type":"string"}}},
 "Customer": {"type":"object","required":["name"],"properties":{"name":{"type":"string"},"display_name":{"type":"string"}}},
 "CdnConfig": {"type":"object","required":["hostname","origins"],"description":"udn_core::config::CdnConfig (see docs/config.md)","properties":{"hostname":{"type":"string"},"customer":{"type":"string"},"origins":A({"type":"string"}),"origin_urls":A({"type":"string"}),"check_interval_secs":{"type":"integer"},"pops":A({"type":"string"}),"service":{"type":"string"},"ttl":{"type":"integer"},"answers":{"type":"integer"}}},
 "GtmConfig": {"type":"object","required":["hostname","service","targets"],"description":"udn_core::config::GtmConfig","properties":{"hostname":{"type":"string"},"customer":{"type":"string"},"service":{"type":"string"},"ttl":{"type":"integer"},"answers":{"type":"integer","minimum":1,"maximum":8},"all_down":{"enum":["standby","all","none"]},"unchecked":{"enum":["up","down"]},"standby":A(ip),"persistence":{"type":["object","null"],"properties":{"secs":{"type":"integer"}}},"weighting":{"type":"object","properties":{"latency":{"type":"number"},"load":{"type":"number"},"response_time":{"type":"number"}}},"near_equal":{"type":"number"},"targets":A({"type":"object","required":["server"],"properties":{"server":{"type":"string"},"weight":{"type":"integer"}}})}},
 "GtmView": {"type":"object","properties":{"config":R("GtmConfig"),"targets":A({"type":"object","properties":{"server":{"type":"string"},"site":{"type":["string","null"]},"addresses":A(ip),"weight":{"type":"integer"}}}),"monitor":{"oneOf":[R("ServiceConfig"),{"type":"null"}]}}},
 "NewAddress": {"type":"object","properties":{"address":ip,"server":{"type":"string"},"site":{"type":"string","description":"Origin site (location) of a new server; default `<customer>-origin`"},"weight":{"type":"integer"}}},
 "ServiceConfig": {"type":"object","description":"udn_core::config::ServiceConfig without `name`","properties":{"kind":{"enum":["http","https","tcp","dns"]},"port":{"type":"integer"},"path":{"type":"string"},"host":{"type":"string"},"expect_status":A({"type":"integer"}),"expect_content":{"type":"string"},"expect_within":{"type":"integer"},"interval_secs":{"type":"integer"},"timeout_ms":{"type":"integer"},"tls_verify":{"type":"boolean","description":"HTTPS: check the certificate (default true)"},"tls_ca":{"type":"string","description":"HTTPS: extra trusted roots, PEM"}}},
 "StaticMapping": {"type":"object","required":["network","target"],"properties":{"network":{"type":"string","description":"CIDR"},"target":{"type":"string"},"hostnames":A({"type":"string"})}},
 "Config": {"type":"object","description":"The whole udn_core::Config in its serde JSON form (see docs/config.md)"},
 "ConfigSnapshot": {"type":"object","properties":{"version":{"type":"integer"},"config":R("Config"),"created_at":{"type":"integer","description":"ms since the epoch"},"author":{"type":"string"}}},
 "PurgeRequest": {"type":"object","required":["scope","target"],"properties":{"scope":{"enum":["url","prefix","domain"]},"target":{"type":"string","description":"URL (url), directory URL (prefix) or domain name (domain)"}}},
 "PurgeView": {"type":"object","properties":{"seq":{"type":"integer"},"customer":{"type":"string"},"scope":{"enum":["url","prefix","domain"]},"target":{"type":"string"},"requested_by":{"type":"string"},"requested_at":{"type":"integer"},"applied":{"type":"integer"},"total":{"type":"integer"},"edges":A({"type":"object","properties":{"edge":{"type":"string"},"applied":{"type":"boolean"},"attempts":{"type":"integer"},"last_error":{"type":["string","null"]},"applied_at":{"type":["integer","null"]}}})}},
 "PageCheckRequest": {"type":"object","required":["url","locations"],"properties":{"url":{"type":"string"},"locations":A({"type":"string"}),"repeat":{"type":"boolean","description":"Fetch the page a second time with warm DNS"}}},
 "PageCheckAnswer": {"type":"object","properties":{"url":{"type":"string"},"results":A({"type":"object","properties":{"location":{"type":"string"},"ok":{"type":"boolean"},"error":{"type":["string","null"]},"rows":A(R("PageRow"))}})}},
 "PageRow": {"type":"object","description":"Times in ms; stt/end are offsets from the page start, drt (DNS), cot (connect), tls, dst (first byte), fnt (receive) durations","properties":{k:{"type":"number"} for k in ["stt","drt","cot","tls","dst","fnt","end"]} | {"pass":{"type":"integer","description":"1, or 2 for the warm repeat"},"url":{"type":"string"},"ip":{"type":["string","null"]},"err":{},"hrc":{"type":["integer","null"]},"len":{"type":["integer","null"]},"chk":{}}},
 "InvoiceSummary": {"type":"object","properties":{"id":{"type":"integer"},"number":{"type":"string"},"customer":{"type":"string"},"period_start":{"type":"integer"},"period_end":{"type":"integer"},"total":{"type":"string","description":"Exact decimal"},"currency":{"type":"string"},"issued_at":{"type":"integer"}}},
}
doc = {
 "openapi": "3.1.0",
 "info": {"title": "UDN control plane API", "version": "1", "description": "Versioned REST API of `udn control`. Authenticate with the session cookie from /v1/auth/login (send X-CSRF-Token on changes) or `Authorization: Bearer udn_...` with an API token (POST /v1/tokens), which acts as its user restricted to its scopes (403 naming the scope a route needs; 401 once expired or revoked). Passwords and credential routes (/v1/auth/*, /v1/me/password, /v1/users, /v1/tokens) exist only on the HTTPS listener, not on the plain-HTTP `--api-listen` one. A customer sees and changes only its own objects (403 otherwise); an admin sees all. Validation errors (422) name each field at fault."},
 "servers": [{"url": "/"}],
 "security": [{"cookie": []}, {"bearer": []}],
 "paths": paths,
 "components": {"schemas": schemas, "responses": {"Error": {"description": "error", "content": {"application/json": {"schema": R("Error")}}}},
   "securitySchemes": {"cookie": {"type": "apiKey", "in": "cookie", "name": "udn_session"}, "bearer": {"type": "http", "scheme": "bearer"}}},
}
json.dump(doc, open(__import__("os").path.join(__import__("os").path.dirname(__file__), "..", "docs", "openapi.json"), "w"), indent=1)
