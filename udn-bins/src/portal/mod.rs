//! The customer portal: server-rendered HTML (maud) over HTTPS, charts as server-side
//! SVG (plotters), every change through the same validated paths as the REST API.
//!
//! `udn control` serves [`app`] (API + portal) with [`serve_https`] on a certificate
//! from [`tls::server_config`].

pub mod charts;
mod ops;
mod quality;
pub mod signup;
pub mod tls;

pub use tls::{CertSource, serve_https, server_config};

use crate::api::auth::{self, Auth, SESSION_COOKIE};
use crate::api::backend::{DeliveryState, PurgeScope, Role, SessionKind, Window};
use crate::api::fanout::{LocationCheck, PageRow};
use crate::api::routes::{self as r, NewAddress, PageCheckBody, PurgeBody};
use crate::api::timerange::Resolved;
use crate::api::{ApiError, ApiState, ClientIp, IsTls};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde::Deserialize;
use std::collections::BTreeMap;
use udn_core::Timestamp;

/// The world outlines (world-atlas 2.0.2 `countries-110m.json`, Natural Earth 4.1.0,
/// public domain; ISC-licensed packaging, see `udn-bins/assets/`).
pub const WORLD_TOPOJSON: &str = include_str!("../../assets/countries-110m.json");

/// The API and the portal in one router.
pub fn app(state: ApiState) -> Router {
    crate::api::router(state.clone()).merge(router(state))
}

/// The portal's pages.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/domains") }))
        .route("/login", get(login_page).post(login_submit))
        .route("/logout", post(logout))
        .route("/domains", get(domains))
        .route("/cache", get(cache_page).post(cache_submit))
        .route("/activity/cdn", get(cdn_activity))
        .route("/activity/cdn/locations", get(cdn_locations))
        .route("/activity/cdn/quality", get(quality::quality_page))
        .route("/activity/gtm", get(gtm_activity))
        .route("/activity/gtm/locations", get(gtm_locations))
        .route("/streaming", get(streaming_page))
        .route("/ops", get(ops::ops_page))
        .route("/tests", get(tests_page).post(tests_submit))
        .route("/gtm", get(gtm_page))
        .route("/gtm/add", post(gtm_add))
        .route("/gtm/{hostname}/delete", post(gtm_delete))
        .route("/gtm/{hostname}/addresses", post(gtm_address_add))
        .route(
            "/gtm/{hostname}/addresses/{key}/delete",
            post(gtm_address_delete),
        )
        .route("/gtm/{hostname}/monitor", post(gtm_monitor))
        .route("/invoices", get(invoices))
        .route("/billing-runs", get(billing_runs))
        .route("/invoices/{id}", get(invoice))
        .route(
            "/signup",
            get(signup::signup_page).post(signup::signup_submit),
        )
        .route(
            "/signup/confirm",
            get(signup::confirm_page).post(signup::confirm_submit),
        )
        .route("/signups", get(signup::signups_page))
        .route("/signups/{account}/{what}", post(signup::signups_decide))
        .with_state(state)
}

// ---------------------------------------------------------------- plumbing

/// A logged-in portal user; anyone else is sent to the login page.
pub struct PortalUser(pub Auth);

impl FromRequestParts<ApiState> for PortalUser {
    type Rejection = Response;
    async fn from_request_parts(parts: &mut Parts, st: &ApiState) -> Result<Self, Response> {
        match auth::authenticate(parts, st).await {
            Ok(Some(a)) if a.kind == SessionKind::Cookie => Ok(PortalUser(a)),
            Ok(_) => Err(Redirect::to("/login").into_response()),
            Err(e) => Err(PortalError(e).into_response()),
        }
    }
}

/// An error shown as a page.
pub struct PortalError(pub ApiError);

impl From<ApiError> for PortalError {
    fn from(e: ApiError) -> Self {
        PortalError(e)
    }
}

impl IntoResponse for PortalError {
    fn into_response(self) -> Response {
        let status = self.0.status();
        let title = match status {
            StatusCode::FORBIDDEN => "Not allowed",
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::UNPROCESSABLE_ENTITY => "Invalid input",
            StatusCode::TOO_MANY_REQUESTS => "Too many attempts",
            _ => "Error",
        };
        let body = html! {
            (DOCTYPE)
            html { head { meta charset="utf-8"; meta name="viewport" content="width=device-width, initial-scale=1"; title { "UDN: " (title) } (style()) }
            body { main {
                h1 id="error" { (title) }
                p class="error" { (self.0.message()) }
                p { a href="/domains" { "Back to the portal" } }
            } } }
        };
        (status, body).into_response()
    }
}

type Page = Result<Response, PortalError>;

fn style() -> Markup {
    html! { style { (PreEscaped(r#"
body{font-family:system-ui,sans-serif;margin:0;color:#222;background:#f6f7f9}
nav{background:#1f3b57;padding:.5em 1em;display:flex;flex-wrap:wrap;gap:1em;align-items:center}
nav a{color:#fff;text-decoration:none}nav a.on{font-weight:bold;text-decoration:underline}
nav form{margin-left:auto}nav span{color:#cde}
main{padding:1em 2em;max-width:1100px}
.health.up{color:#007a5a}.health.down{color:#b34700;font-weight:bold}.health.stale,.health.unmonitored{color:#666}
table{border-collapse:collapse;margin:.5em 0 1.5em;background:#fff}
td,th{border:1px solid #ccd;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#e8edf3}.num{text-align:right}
.error{color:#b00020}.ok{color:#17702a}.pending{color:#a15c00}.failed{color:#b00020}.cancelled{color:#666}
form.inline{display:inline}fieldset{border:1px solid #ccd;margin:.5em 0;background:#fff}
svg{max-width:100%;height:auto;background:#fff}
form.range{display:flex;flex-wrap:wrap;gap:.5em;align-items:center;background:#fff;padding:.5em;border:1px solid #ccd}
@media (max-width:700px){main{padding:.5em}table{display:block;overflow-x:auto;max-width:100%}nav{gap:.5em;font-size:.9em}input,select{max-width:100%}}
"#)) } }
}

const NAV: [(&str, &str); 11] = [
    ("/domains", "Domains"),
    ("/cache", "Cache Control"),
    ("/activity/cdn", "CDN Recent Activity"),
    ("/activity/cdn/locations", "CDN By Location"),
    ("/activity/cdn/quality", "CDN Quality"),
    ("/activity/gtm", "GTM Recent Activity"),
    ("/activity/gtm/locations", "GTM By Location"),
    ("/streaming", "Streaming Media"),
    ("/tests", "Tests"),
    ("/gtm", "GTM Configuration"),
    ("/invoices", "Invoices"),
];

fn layout(a: &Auth, active: &str, title: &str, refresh: bool, body: Markup) -> Response {
    let who = match (&a.user.role, &a.user.customer) {
        (Role::Admin, _) => format!("{} (admin)", a.user.username),
        (_, Some(c)) => format!("{} ({c})", a.user.username),
        _ => a.user.username.clone(),
    };
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if refresh { meta http-equiv="refresh" content="2"; }
                title { "UDN: " (title) }
                (style())
            }
            body {
                nav {
                    strong style="color:#fff" { "UDN" }
                    @for (href, label) in NAV {
                        a href=(href) class=[(href == active).then_some("on")] { (label) }
                    }
                    @if a.user.role == Role::Admin {
                        a href="/ops" class=[("/ops" == active).then_some("on")] { "Operations" }
                        a href="/signups" class=[("/signups" == active).then_some("on")] { "Sign-ups" }
                    }
                    form method="post" action="/logout" {
                        span id="who" { (who) " " }
                        input type="hidden" name="csrf" value=(a.csrf);
                        button type="submit" id="logout" { "Log out" }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    };
    let mut resp = page.into_response();
    resp.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

type FormPairs = Vec<(String, String)>;

fn field<'a>(f: &'a FormPairs, name: &str) -> Option<&'a str> {
    f.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.trim().is_empty())
}

fn check_csrf(a: &Auth, f: &FormPairs) -> Result<(), PortalError> {
    let sent = f
        .iter()
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    if auth::same_secret(sent, &a.csrf) {
        Ok(())
    } else {
        Err(ApiError::Csrf.into())
    }
}

fn csrf_input(a: &Auth) -> Markup {
    html! { input type="hidden" name="csrf" value=(a.csrf); }
}

fn fmt_time(t: Timestamp) -> String {
    charts::utc_fmt(t.as_millis() as f64, "%Y-%m-%d %H:%M UTC")
}

#[derive(Deserialize, Default)]
struct ScopeQuery {
    customer: Option<String>,
    seq: Option<u64>,
}

/// One chart page's rows: `query` run over the page's range (`?from=&to=&tz=` or the
/// preset `?hours=`) for the customer in scope (`?customer=`, checked against the user)
/// and the domain chosen (`?host=`). Returns the rows and the resolved range.
async fn chart_rows<T: Send + 'static>(
    st: &ApiState,
    a: &Auth,
    q: &r::TrafficQuery,
    query: fn(&dyn crate::api::Traffic, Window<'_>) -> Result<T, crate::api::BackendError>,
) -> Result<(T, Resolved), PortalError> {
    let (rows, range, _, _) = r::traffic_rows(st, a, q, query).await?;
    Ok((rows, range))
}

/// Map points at the configured POPs' locations (names not in the config are skipped).
fn pop_points<'a>(
    cfg: &udn_core::Config,
    values: impl IntoIterator<Item = (&'a str, f64)>,
) -> Vec<charts::MapPoint> {
    values
        .into_iter()
        .filter_map(|(pop, value)| {
            let p = cfg.pops.iter().find(|p| p.name == pop)?;
            Some(charts::MapPoint {
                label: pop.to_owned(),
                lat: p.location.lat,
                lon: p.location.lon,
                value,
            })
        })
        .collect()
}

// ---------------------------------------------------------------- login

/// The double-submit CSRF token of a form shown before login (the login form, the
/// sign-up forms): a fresh token in an HttpOnly, SameSite=Strict cookie scoped to the
/// form's path, and the same token in the form.
struct FormCsrf {
    cookie: &'static str,
    path: &'static str,
}

const LOGIN_CSRF: FormCsrf = FormCsrf {
    cookie: "udn_login_csrf",
    path: "/login",
};

impl FormCsrf {
    /// The page `make` builds with a fresh token, and the cookie holding it.
    fn respond(
        &self,
        tls: bool,
        status: StatusCode,
        make: impl FnOnce(&str) -> Markup,
    ) -> Response {
        let token = random_token();
        let mut resp = (status, make(&token)).into_response();
        let cookie = format!(
            "{}={token}; Path={}; HttpOnly; SameSite=Strict{}",
            self.cookie,
            self.path,
            if tls { "; Secure" } else { "" }
        );
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            resp.headers_mut().insert(header::SET_COOKIE, v);
        }
        resp
    }

    /// Whether the form's `csrf` field matches the cookie (compared in constant time).
    fn check(&self, headers: &axum::http::HeaderMap, f: &FormPairs) -> bool {
        let cookie = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == self.cookie)
            .map(|(_, v)| v.to_owned())
            .unwrap_or_default();
        let sent = field(f, "csrf").unwrap_or("");
        !cookie.is_empty() && auth::same_secret(sent, &cookie)
    }
}

fn random_token() -> String {
    crate::api::backend::random_hex(24)
}

fn login_form(token: &str, error: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" { head { meta charset="utf-8"; meta name="viewport" content="width=device-width, initial-scale=1"; title { "UDN: log in" } (style()) }
        body { main {
            h1 { "UDN portal" }
            @if let Some(e) = error { p class="error" id="login-error" { (e) } }
            form method="post" action="/login" id="login" {
                input type="hidden" name="csrf" value=(token);
                p { label { "User name " input type="text" name="username" id="username" autocomplete="username" required; } }
                p { label { "Password " input type="password" name="password" id="password" autocomplete="current-password" required; } }
                p { button type="submit" id="login-submit" { "Log in" } }
            }
            p { "New here? " a href="/signup" id="to-signup" { "Sign up" } " (where the operator offers it)" }
        } } }
    }
}

async fn login_page(IsTls(tls): IsTls) -> Response {
    LOGIN_CSRF.respond(tls, StatusCode::OK, |t| login_form(t, None))
}

async fn login_submit(
    State(st): State<ApiState>,
    IsTls(tls): IsTls,
    ClientIp(ip): ClientIp,
    headers: axum::http::HeaderMap,
    Form(f): Form<FormPairs>,
) -> Response {
    let again = |status: StatusCode, msg: &str| {
        LOGIN_CSRF.respond(tls, status, |t| login_form(t, Some(msg)))
    };
    if !LOGIN_CSRF.check(&headers, &f) {
        return again(
            StatusCode::FORBIDDEN,
            "The form expired; please log in again.",
        );
    }
    let user = field(&f, "username").unwrap_or("");
    let pass = f
        .iter()
        .find(|(k, _)| k == "password")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    match auth::login(&st, user, pass, ip, SessionKind::Cookie).await {
        Ok((_, s)) => {
            let mut resp = Redirect::to("/domains").into_response();
            if let Ok(v) = HeaderValue::from_str(&auth::session_cookie(&s.token, tls)) {
                resp.headers_mut().append(header::SET_COOKIE, v);
            }
            resp
        }
        Err(ApiError::TooManyAttempts(s)) => again(
            StatusCode::TOO_MANY_REQUESTS,
            &format!("Too many failed logins; try again in {s} seconds."),
        ),
        Err(ApiError::Unauthorized) => {
            again(StatusCode::UNAUTHORIZED, "Wrong user name or password.")
        }
        Err(e) => PortalError(e).into_response(),
    }
}

async fn logout(
    State(st): State<ApiState>,
    IsTls(tls): IsTls,
    PortalUser(a): PortalUser,
    Form(f): Form<FormPairs>,
) -> Page {
    check_csrf(&a, &f)?;
    let t = a.token.clone();
    st.db(move |b| b.accounts.delete_session(&t)).await?;
    let mut resp = Redirect::to("/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&auth::clear_cookie(tls)) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    let _ = SESSION_COOKIE;
    Ok(resp)
}

// ---------------------------------------------------------------- domains

/// A GTM hostname's addresses grouped by location (origin site or POP).
fn addresses_by_site(view: &r::GtmView) -> BTreeMap<String, Vec<String>> {
    let mut by_site: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for t in &view.targets {
        by_site
            .entry(t.site.clone().unwrap_or_else(|| "?".into()))
            .or_default()
            .extend(
                t.addresses
                    .iter()
                    .map(|x| format!("{x} (weight {})", t.weight)),
            );
    }
    by_site
}

/// "verified", or "pending" with the TXT record the owner publishes before
/// `POST /v1/{cdn,gtm}/{hostname}/verify`.
fn verification_cell(hostname: &str, challenge: Option<&str>) -> maud::Markup {
    let v = crate::api::challenge::verification(hostname, challenge);
    html! {
        (v.status)
        @if let Some(r) = &v.record {
            br; "publish " code { (r.name) " TXT \"" (r.value) "\"" }
            " then verify (POST /v1/.../verify)"
        }
    }
}

async fn domains(
    State(st): State<ApiState>,
    PortalUser(a): PortalUser,
    Query(q): Query<ScopeQuery>,
) -> Page {
    let scope = a.scope(q.customer.as_deref())?.map(str::to_owned);
    let snap = r::current(&st).await?;
    let cfg = &snap.config;
    let visible = |c: &str| scope.as_deref().is_none_or(|s| s == c);
    let admin = a.user.role == Role::Admin;
    // A customer that signed up sees its plan and where its sign-up stands.
    let signup = match a.user.customer.clone() {
        Some(c) if !admin => st
            .db(move |b| b.billing.signup(&c))
            .await
            .unwrap_or_default(),
        _ => None,
    };
    let body = html! {
        @if let Some(s) = &signup {
            p id="signup-status" {
                "Plan: "
                @for sub in &s.account.subscriptions { strong class="plan" { (sub.plan) } " (version " (sub.version) ") " }
                "· Sign-up: " strong class="signup-state" { (s.status.label()) }
            }
        }
        h2 { "CDN domains" }
        table id="cdn-domains" {
            tr { th { "CDN domain" } th { "Origin domains" } th { "Status" } @if admin { th { "Customer" } } }
            @for c in cfg.cdn.iter().filter(|c| visible(&c.customer)) {
                tr {
                    td class="cdn-host" { (c.hostname) }
                    td { @for (i, o) in c.origins.iter().enumerate() {
                        @if i > 0 { br; } (o)
                        @if let Some(u) = c.origin_urls.get(i) { " (" (u) ")" }
                    } }
                    td class="verification" { (verification_cell(&c.hostname, c.challenge.as_deref())) }
                    @if admin { td { (c.customer) } }
                }
            }
        }
        @let pending: Vec<_> = cfg.gtm.iter().filter(|g| visible(&g.customer) && g.challenge.is_some()).collect();
        @if !pending.is_empty() {
            h2 { "GTM domains waiting for their DNS check" }
            table id="gtm-pending" {
                tr { th { "GTM domain" } th { "Status" } }
                @for g in pending {
                    tr { td { (g.hostname) } td class="verification" { (verification_cell(&g.hostname, g.challenge.as_deref())) } }
                }
            }
        }
        h2 { "GTM domains" }
        table id="gtm-domains" {
            tr { th { "GTM domain" } th { "Location" } th { "Addresses" } @if admin { th { "Customer" } } }
            @for g in cfg.gtm.iter().filter(|g| visible(&g.customer)) {
                @let view = r::gtm_view(cfg, g);
                @let by_site = addresses_by_site(&view);
                @let n = by_site.len().max(1);
                @for (i, (site, addrs)) in by_site.iter().enumerate() {
                    tr {
                        @if i == 0 { td rowspan=(n) class="gtm-host" { (g.hostname) } }
                        td { (site)
                            @if let Some(p) = cfg.origins.iter().find(|o| &o.name == site).and_then(|o| o.pop.clone()) {
                                " (near " (p) ")"
                            }
                        }
                        td { @for (k, x) in addrs.iter().enumerate() { @if k > 0 { br; } (x) } }
                        @if admin && i == 0 { td rowspan=(n) { (g.customer) } }
                    }
                }
                @if !g.standby.is_empty() {
                    tr { td { (g.hostname) } td { "standby (hidden)" }
                         td { @for (k, x) in g.standby.iter().enumerate() { @if k > 0 { br; } (x.to_string()) } }
                         @if admin { td { (g.customer) } } }
                }
            }
        }
    };
    Ok(layout(&a, "/domains", "Domains", false, body))
}

// ---------------------------------------------------------------- cache control

async fn cache_view(st: &ApiState, a: &Auth, q: &ScopeQuery, error: Option<String>) -> Page {
    let scope = a.scope(q.customer.as_deref())?.map(str::to_owned);
    let list = st
        .db(move |b| b.deliveries.purges(scope.as_deref(), 30, None))
        .await?;
    let mut views = Vec::with_capacity(list.len());
    for p in list {
        views.push(r::purge_view(st, p).await?);
    }
    let pending = views
        .iter()
        .any(|v| v.edges.iter().any(|e| e.state == DeliveryState::Pending));
    let body = html! {
        @if let Some(e) = &error { p class="error" id="purge-error" { (e) } }
        form method="post" action="/cache" id="purge-form" {
            (csrf_input(a))
            fieldset {
                legend { "Invalidate" }
                label { input type="radio" name="scope" value="url" checked; " a URL" } " "
                label { input type="radio" name="scope" value="prefix"; " a directory" } " "
                label { input type="radio" name="scope" value="domain"; " a whole domain" }
                p { input type="text" name="target" id="purge-target" size="70"
                    placeholder="http://cdn.example.com/img/logo.gif"; " "
                    button type="submit" id="purge-submit" { "Invalidate" } }
            }
        }
        h2 { "Recent invalidations" }
        @if pending { p class="pending" { "Propagating; this page refreshes itself." } }
        table id="purges" {
            tr { th { "#" } th { "What" } th { "Target" } th { "Requested" } th { "Propagation" } th { "Edges" } }
            @for v in &views {
                tr id=(format!("purge-{}", v.purge.seq)) class=[(q.seq == Some(v.purge.seq)).then_some("new")] {
                    td { (v.purge.seq) }
                    td { (v.purge.scope.as_str()) }
                    td class="target" { (v.purge.target) }
                    td { (fmt_time(v.purge.requested_at)) " by " (v.purge.requested_by) }
                    td class=(if v.applied == v.total { "ok propagation" } else { "pending propagation" }) {
                        (v.applied) " of " (v.total) " edges"
                    }
                    td { @for e in &v.edges {
                        (e.edge) ": "
                        @match e.state {
                            DeliveryState::Applied => { span class="ok" { "applied" } }
                            DeliveryState::Failed => { span class="failed" { "failed" }
                                @if let Some(err) = &e.last_error { " (" (err) ")" } }
                            DeliveryState::Cancelled => { span class="cancelled" { "cancelled" }
                                @if let Some(err) = &e.last_error { " (" (err) ")" } }
                            DeliveryState::Pending => { span class="pending" { "pending" }
                                @if let Some(err) = &e.last_error { " (" (err) ")" } }
                        }
                        br;
                    } }
                }
            }
        }
    };
    Ok(layout(a, "/cache", "Cache Control", pending, body))
}

async fn cache_page(
    State(st): State<ApiState>,
    PortalUser(a): PortalUser,
    Query(q): Query<ScopeQuery>,
) -> Page {
    cache_view(&st, &a, &q, None).await
}

async fn cache_submit(
    State(st): State<ApiState>,
    PortalUser(a): PortalUser,
    Form(f): Form<FormPairs>,
) -> Page {
    check_csrf(&a, &f)?;
    let scope = field(&f, "scope")
        .and_then(PurgeScope::parse)
        .unwrap_or(PurgeScope::Url);
    let target = field(&f, "target").unwrap_or("").to_owned();
    match r::start_purge(&st, &a, PurgeBody { scope, target }).await {
        Ok(v) => Ok(Redirect::to(&format!("/cache?seq={}", v.purge.seq)).into_response()),
        Err(e @ ApiError::Invalid(_)) => {
            let mut resp = cache_view(&st, &a, &ScopeQuery::default(), Some(e.message())).await?;
            *resp.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
            Ok(resp)
        }
        Err(e) => Err(e.into()),
    }
}

// ---------------------------------------------------------------- activity

/// One value per bucket of `step` ms over `[from, to)`, zero where `pts` has none (points
/// of one bucket are summed).
fn zero_filled(
    from: Timestamp,
    to: Timestamp,
    step: u64,
    pts: impl Iterator<Item = (u64, f64)>,
) -> Vec<(f64, f64)> {
    let start = from.as_millis() / step;
    let end = to.as_millis().div_ceil(step);
    let n = end.saturating_sub(start) as usize;
    let mut v = vec![0.0; n];
    for (m, x) in pts {
        let i = (m / step).saturating_sub(start) as usize;
        if let Some(slot) = v.get_mut(i) {
            *slot += x;
        }
    }
    v.into_iter()
        .enumerate()
        .map(|(i, x)| (((start + i as u64) * step) as f64, x))
        .collect()
}

/// Percent-encodes a query value (everything but unreserved characters).
fn enc(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `&customer=..&host=..&tz=..` of a chart page's query (what a preset link keeps).
fn scope_params(q: &r::TrafficQuery, range: &Resolved) -> String {
    let mut out = String::new();
    for (k, v) in [("customer", &q.customer), ("host", &q.host)] {
        if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
            out.push_str(&format!("&{k}={}", enc(v)));
        }
    }
    out.push_str(&format!("&tz={}", enc(&range.tz_name)));
    out
}

/// Whether the page shows a preset (the last `hours`), not an absolute range.
fn preset_hours(q: &r::TrafficQuery) -> Option<u64> {
    let set = |v: &Option<String>| v.as_deref().is_some_and(|v| !v.trim().is_empty());
    if set(&q.from) || set(&q.to) {
        None
    } else {
        Some(q.hours.unwrap_or(crate::api::timerange::DEFAULT_HOURS))
    }
}

/// What a chart title says of its range: `last 24 h`, or `2026-12-01T00:00 to ...`.
fn range_title(q: &r::TrafficQuery, range: &Resolved) -> String {
    match preset_hours(q) {
        Some(h) => format!("last {h} h"),
        None => format!(
            "{} to {} ({})",
            range.local_input(range.range.from).replace('T', " "),
            range.local_input(range.range.to).replace('T', " "),
            range.tz_name
        ),
    }
}

/// Time zones offered in the picker (any IANA name may be typed).
const TZ_CHOICES: [&str; 12] = [
    "UTC",
    "Europe/London",
    "Europe/Berlin",
    "Europe/Moscow",
    "America/New_York",
    "America/Chicago",
    "America/Los_Angeles",
    "America/Sao_Paulo",
    "Asia/Kolkata",
    "Asia/Singapore",
    "Asia/Tokyo",
    "Australia/Sydney",
];

/// The presets: label and hours back from now.
const PRESETS: [(&str, u64); 5] = [
    ("Last hour", 1),
    ("24 h", 24),
    ("7 d", 168),
    ("30 d", 720),
    ("1 y", 8760),
];

/// The hostnames of a chart page's domain select: the CDN (or GTM) hostnames of the
/// customer in scope, or of every customer for an admin.
async fn hostnames(
    st: &ApiState,
    a: &Auth,
    q: &r::TrafficQuery,
    gtm: bool,
) -> Result<Vec<String>, PortalError> {
    let customer = a.scope(q.customer.as_deref())?.map(str::to_owned);
    let snap = r::current(st).await?;
    let cfg = &snap.config;
    let mine = |c: &str| customer.as_deref().is_none_or(|m| m == c);
    let mut names: Vec<String> = if gtm {
        cfg.gtm
            .iter()
            .filter(|g| mine(&g.customer))
            .map(|g| udn_core::config::canonical_hostname(&g.hostname))
            .collect()
    } else {
        cfg.cdn
            .iter()
            .filter(|c| mine(&c.customer))
            .map(|c| udn_core::config::canonical_hostname(&c.hostname))
            .collect()
    };
    names.sort();
    names.dedup();
    Ok(names)
}

/// The range picker of a chart page (a GET form: two `datetime-local` inputs read in
/// the chosen time zone, the zone, the domain), the presets, the range the page covers
/// as the server resolved it, and links to its data as CSV and JSON (the API series).
fn range_picker(
    path: &str,
    api: &str,
    q: &r::TrafficQuery,
    range: &Resolved,
    hosts: &[String],
) -> Markup {
    range_picker_for(path, api, q, range, Some(hosts))
}

/// [`range_picker`], with the domain choice only when `hosts` is given (pages not
/// about customers' domains have none).
fn range_picker_for(
    path: &str,
    api: &str,
    q: &r::TrafficQuery,
    range: &Resolved,
    hosts: Option<&[String]>,
) -> Markup {
    let chosen_host = q
        .host
        .as_deref()
        .map(udn_core::config::canonical_hostname)
        .unwrap_or_default();
    let preset = preset_hours(q);
    let mut export = format!(
        "{api}?from={}&to={}&tz={}",
        enc(&range.rfc3339(range.range.from)),
        enc(&range.rfc3339(range.range.to)),
        enc(&range.tz_name)
    );
    for (k, v) in [("customer", &q.customer), ("host", &q.host)] {
        if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
            export.push_str(&format!("&{k}={}", enc(v)));
        }
    }
    html! {
        form method="get" action=(path) id="range-form" class="range" {
            @if let Some(c) = q.customer.as_deref().filter(|c| !c.is_empty()) {
                input type="hidden" name="customer" value=(c);
            }
            label { "From " input type="datetime-local" name="from" id="range-from-input"
                value=(range.local_input(range.range.from)); }
            " "
            label { "To " input type="datetime-local" name="to" id="range-to-input"
                value=(range.local_input(range.range.to)); }
            " "
            label { "Time zone " input type="text" name="tz" id="tz-input" list="tz-list"
                size="18" maxlength="64" value=(range.tz_name); }
            datalist id="tz-list" { @for z in TZ_CHOICES { option value=(z) {} } }
            " "
            @if let Some(hosts) = hosts {
                label { "Domain "
                    select name="host" id="host-select" {
                        option value="" selected[chosen_host.is_empty()] { "All domains" }
                        @for h in hosts { option value=(h) selected[*h == chosen_host] { (h) } }
                    }
                }
                " "
            }
            button type="submit" id="range-apply" { "Show" }
        }
        p class="presets" id="presets" { "Presets: "
            @for (label, h) in PRESETS {
                @if preset == Some(h) { strong { (label) } } @else {
                    a href=(format!("{path}?hours={h}{}", scope_params(q, range))) { (label) } }
                " "
            }
        }
        p id="range" { "Covers "
            time id="range-from" datetime=(range.rfc3339(range.range.from)) { (range.rfc3339(range.range.from)) }
            " to "
            time id="range-to" datetime=(range.rfc3339(range.range.to)) { (range.rfc3339(range.range.to)) }
            " (" span id="range-tz" { (range.tz_name) } ", one point per "
            span id="range-grain" { (range.grain.name()) } "). Data: "
            a id="csv-link" href=(format!("{export}&format=csv")) { "CSV" } " "
            a id="json-link" href=(format!("{export}&format=json")) { "JSON" }
        }
    }
}

async fn cdn_activity(
    State(st): State<ApiState>,
    PortalUser(a): PortalUser,
    Query(q): Query<r::TrafficQuery>,
) -> Page {
    let (pts, range) = chart_rows(&st, &a, &q, |b, w| b.cdn_traffic(w)).await?;
    let hosts = hostnames(&st, &a, &q, false).await?;
    let (from, to) = (range.range.from, range.range.to);
    let step = range.grain.millis();
    let secs = step as f64 / 1000.0;
    let total_hits: u64 = pts.iter().map(|p| p.hits).sum();
    let total_bytes: u64 = pts.iter().map(|p| p.bytes).sum();
    let bits = zero_filled(
        from,
        to,
        step,
        pts.iter()
            .map(|p| (p.minute.as_millis(), p.bytes as f64 * 8.0 / secs)),
    );
    let hits = zero_filled(
        from,
        to,
        step,
        pts.iter()
            .map(|p| (p.minute.as_millis(), p.hits as f64 / secs)),
    );
    let (f, t) = (from.as_millis() as f64, to.as_millis() as f64);
    let offset = range.offset_ms(to) as f64;
    let traffic_svg = charts::time_chart_in(
        &format!(
            "Traffic, {} (total {}B)",
            range_title(&q, &range),
            charts::si(total_bytes as f64)
        ),
        "bit/s",
        f,
        t,
        offset,
        &[charts::Line {
            label: "traffic".into(),
            points: bits,
        }],
    );
    let hits_svg = charts::time_chart_in(
        &format!("Hits per second (total {total_hits} hits)"),
        "/s",
        f,
        t,
        offset,
        &[charts::Line {
            label: "hits".into(),
            points: hits,
        }],
    );
    let body = html! {
        (range_picker("/activity/cdn", "/v1/traffic/cdn", &q, &range, &hosts))
        div id="traffic-chart" { (PreEscaped(traffic_svg)) }
        div id="hits-chart" { (PreEscaped(hits_svg)) }
        p { "Times are in " (range.tz_name) "; the dotted line marks midnight; the value at the right edge is the last bucket's (per " (range.grain.name()) ")." }
        table id="cdn-totals" { tr { th { "Hits" } th { "Bytes" } }
            tr { td class="num" id="total-hits" { (total_hits) } td class="num" id="total-bytes" { (total_bytes) } } }
    };
    Ok(layout(
        &a,
        "/activity/cdn",
        "CDN Recent Activity",
        false,
        body,
    ))
}

async fn cdn_locations(
    State(st): State<ApiState>,
    PortalUser(a): PortalUser,
    Query(q): Query<r::TrafficQuery>,
) -> Page {
    let (rows, range) = chart_rows(&st, &a, &q, |b, w| b.cdn_traffic_by_location(w)).await?;
    let hosts = hostnames(&st, &a, &q, false).await?;
    let snap = r::current(&st).await?;
    let cfg = &snap.config;
    let points = pop_points(cfg, rows.iter().map(|l| (l.pop.as_str(), l.bytes as f64)));
    let map = charts::world_map(
        &format!("Bytes served by location, {}", range_title(&q, &range)),
        "B",
        &points,
    );
    let bytes = charts::bar_chart(
        "Bytes by location",
        "B",
        &rows
            .iter()
            .map(|l| (l.pop.clone(), l.bytes as f64))
            .collect::<Vec<_>>(),
    );
    let hits = charts::bar_chart(
        "Hits by location",
        "",
        &rows
            .iter()
            .map(|l| (l.pop.clone(), l.hits as f64))
            .collect::<Vec<_>>(),
    );
    let body = html! {
        (range_picker("/activity/cdn/locations", "/v1/traffic/cdn/locations", &q, &range, &hosts))
        div id="map" { (PreEscaped(map)) }
        div id="bytes-by-location" { (PreEscaped(bytes)) }
        div id="hits-by-location" { (PreEscaped(hits)) }
        table id="locations" { tr { th { "Location" } th { "Bytes" } th { "Hits" } }
            @for l in &rows { tr { td { (l.pop) } td class="num" { (l.bytes) } td class="num" { (l.hits) } } } }
        p { small { "Map: Natural Earth 1:110m (public domain) via world-atlas 2.0.2 (ISC)." } }
    };
    Ok(layout(
        &a,
        "/activity/cdn/locations",
        "CDN By Location",
        false,
        body,
    ))
}

/// The Streaming Media section: each HLS or DASH stream of the customer over the range
/// (viewers, segments, playlists, bytes, origin fetches), from `GET /v1/streaming`'s data.
async fn streaming_page(
    State(st): State<ApiState>,
    PortalUser(a): PortalUser,
    Query(q): Query<r::TrafficQuery>,
) -> Page {
    r::check_streaming_range(&q)?;
    let (report, range) = chart_rows(&st, &a, &q, |b, w| b.streaming(w)).await?;
    let hosts = hostnames(&st, &a, &q, false).await?;
    let label = |s: &crate::store::stream::StreamTotals| format!("{}{}", s.host, s.stream);
    let bytes = charts::bar_chart(
        &format!("Bytes to viewers by stream, {}", range_title(&q, &range)),
        "B",
        &report
            .streams
            .iter()
            .take(20)
            .map(|s| (label(s), s.agg.bytes as f64))
            .collect::<Vec<_>>(),
    );
    let body = html! {
        (range_picker("/streaming", "/v1/streaming", &q, &range, &hosts))
        @if report.streams.is_empty() {
            p id="no-streams" { "No HLS or DASH requests in this range." }
        } @else {
            div id="bytes-by-stream" { (PreEscaped(bytes)) }
        }
        table id="streams" {
            tr { th { "Hostname" } th { "Stream" } th { "Viewers" } th { "Segments" }
                th { "Playlists" } th { "Bytes" } th { "Origin fetches" } th { "Slowest fill (ms)" } }
            @for s in &report.streams {
                tr {
                    td { (s.host) } td { (s.stream) }
                    td class="num" { (s.viewers) } td class="num" { (s.agg.segments) }
                    td class="num" { (s.agg.playlists) } td class="num" { (s.agg.bytes) }
                    td class="num" { (s.agg.segment_fills + s.agg.playlist_fills) }
                    td class="num" { (s.agg.fill_us_max / 1000) }
                }
            }
        }
        p { small { "Streams are HLS playlists (.m3u8) and DASH manifests (.mpd) with their segments, grouped by the playlist's directory. Viewers are distinct client addresses." } }
    };
    Ok(layout(&a, "/streaming", "Streaming Media", false, body))
}

async fn gtm_activity(
    State(st): State<ApiState>,
    PortalUser(a): PortalUser,
    Query(q): Query<r::TrafficQuery>,
) -> Page {
    let (pts, range) = chart_rows(&st, &a, &q, |b, w| b.gtm_answers(w)).await?;
    let hosts = hostnames(&st, &a, &q, true).await?;
    let (from, to) = (range.range.from, range.range.to);
    let step = range.grain.millis();
    let mut by_addr: BTreeMap<(String, String), Vec<(u64, f64)>> = BTreeMap::new();
    for p in &pts {
        by_addr
            .entry((p.hostname.clone(), p.address.clone()))
            .or_default()
            .push((p.minute.as_millis(), p.answers as f64));
    }
    let mut totals = Vec::new();
    let lines: Vec<charts::Line> = by_addr
        .into_iter()
        .map(|((host, addr), v)| {
            totals.push((
                host.clone(),
                addr.clone(),
                v.iter().map(|x| x.1).sum::<f64>(),
            ));
            charts::Line {
                label: format!("{addr} ({host})"),
                points: zero_filled(from, to, step, v.into_iter()),
            }
        })
        .collect();
    let svg = charts::time_chart_in(
        &format!(
            "Answers per {} by address, {}",
            range.grain.name(),
            range_title(&q, &range)
        ),
        "",
        from.as_millis() as f64,
        to.as_millis() as f64,
        range.offset_ms(to) as f64,
        &lines,
    );
    // Reasons and health come from the log store; a backend without one has neither.
    let reasons = match r::traffic_rows(&st, &a, &q, |b, w| b.gtm_reasons(w)).await {
        Ok((rows, ..)) => rows,
        Err(ApiError::NotFound) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let reasons_svg = charts::bar_chart(
        &format!("Answers by decision reason, {}", range_title(&q, &range)),
        "",
        &reasons
            .iter()
            .map(|(k, n)| (k.clone(), *n as f64))
            .collect::<Vec<_>>(),
    );
    // Each address's live health (the target that publishes it).
    let snap = r::current(&st).await?;
    let cfg = &snap.config;
    let (checks, now) = match r::recent_checks(&st).await {
        Ok(x) => x,
        Err(ApiError::NotFound) => (Vec::new(), crate::api::now()),
        Err(e) => return Err(e.into()),
    };
    let mut status: BTreeMap<(String, String), String> = BTreeMap::new();
    for g in cfg.gtm.iter().filter(|g| a.user.may_access(&g.customer)) {
        for t in r::gtm_health(cfg, g, &checks, now).targets {
            for ad in &t.target.addresses {
                status.insert((g.hostname.clone(), ad.to_string()), t.status.clone());
            }
        }
    }
    let body = html! {
        (range_picker("/activity/gtm", "/v1/traffic/gtm", &q, &range, &hosts))
        div id="answers-chart" { (PreEscaped(svg)) }
        p { "How often each address was given out; a failover shows as one line dropping and another rising." }
        table id="answers" { tr { th { "Hostname" } th { "Address" } th { "Answers" } th { "Health now" } }
            @for (h, ad, n) in &totals {
                @let s = status.get(&(h.clone(), ad.clone())).map_or("–", String::as_str);
                tr { td { (h) } td { (ad) } td class="num" { (n) } td class=(format!("health {s}")) { (s) } }
            } }
        div id="reasons-chart" { (PreEscaped(reasons_svg)) }
        table id="reasons" { tr { th { "Reason" } th { "Answers" } }
            @for (k, n) in &reasons { tr { td { (k) } td class="num" { (n) } } } }
        p { small { "Reasons: latency (the POP nearest the resolver by measured RTT), sticky (persistence), static (a static mapping), standby (every regular address down), weighted, and the rest as the DNS server logs them. Health is the probes' latest view (see GTM Configuration)." } }
    };
    Ok(layout(
        &a,
        "/activity/gtm",
        "GTM Recent Activity",
        false,
        body,
    ))
}

async fn gtm_locations(
    State(st): State<ApiState>,
    PortalUser(a): PortalUser,
    Query(q): Query<r::TrafficQuery>,
) -> Page {
    let (rows, range) = chart_rows(&st, &a, &q, |b, w| b.gtm_answers_by_location(w)).await?;
    let hosts = hostnames(&st, &a, &q, true).await?;
    let snap = r::current(&st).await?;
    let cfg = &snap.config;
    let mut per_pop: BTreeMap<String, Vec<(String, f64)>> = BTreeMap::new();
    for l in &rows {
        per_pop
            .entry(l.pop.clone())
            .or_default()
            .push((l.address.clone(), l.answers as f64));
    }
    let points = pop_points(
        cfg,
        per_pop
            .iter()
            .map(|(pop, v)| (pop.as_str(), v.iter().map(|x| x.1).sum())),
    );
    let map = charts::world_map(
        &format!("GTM answers by location, {}", range_title(&q, &range)),
        "",
        &points,
    );
    let body = html! {
        (range_picker("/activity/gtm/locations", "/v1/traffic/gtm/locations", &q, &range, &hosts))
        div id="map" { (PreEscaped(map)) }
        @for (pop, v) in &per_pop {
            h2 { "Answers given at " (pop) }
            div class="location-bars" { (PreEscaped(charts::bar_chart(&format!("Addresses given out at {pop}"), "", v))) }
        }
        table id="answers-by-location" { tr { th { "Location" } th { "Address" } th { "Answers" } }
            @for l in &rows { tr { td { (l.pop) } td { (l.address) } td class="num" { (l.answers) } } } }
    };
    Ok(layout(
        &a,
        "/activity/gtm/locations",
        "GTM By Location",
        false,
        body,
    ))
}

// ---------------------------------------------------------------- tests (page check)

fn tests_form(st: &ApiState, a: &Auth, url: &str, chosen: &[String]) -> Markup {
    html! {
        form method="post" action="/tests" id="pagecheck-form" {
            (csrf_input(a))
            p { label { "Page URL " input type="text" name="url" id="pagecheck-url" size="70" value=(url); } }
            p { "Locations: "
                @for p in &st.options().probes {
                    label { input type="checkbox" name="locations" value=(p.location)
                        checked[chosen.contains(&p.location)]; " " (p.location) } " "
                }
            }
            p { label { input type="checkbox" name="repeat" value="on"; " repeat with warm DNS" } " "
                button type="submit" id="pagecheck-submit" { "Run page check" } }
        }
    }
}

async fn tests_page(State(st): State<ApiState>, PortalUser(a): PortalUser) -> Page {
    let body = tests_form(&st, &a, "", &[]);
    Ok(layout(&a, "/tests", "Tests", false, body))
}

/// Page time, bytes and failed components of one pass.
fn pass_summary(rows: &[PageRow]) -> (f64, u64, usize) {
    let total = rows.iter().map(|r| r.end).fold(0.0f64, f64::max);
    let bytes = rows.iter().filter_map(|r| r.len).sum();
    let errors = rows.iter().filter(|r| r.failed()).count();
    (total, bytes, errors)
}

/// A location's rows split by pass.
fn passes(c: &LocationCheck) -> Vec<(u8, Vec<PageRow>)> {
    let mut by: BTreeMap<u8, Vec<PageRow>> = BTreeMap::new();
    for r in &c.rows {
        by.entry(r.pass).or_default().push(r.clone());
    }
    by.into_iter().collect()
}

fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map(|x| x.to_string()).unwrap_or_default()
}

/// A JSON cell of a page-check row: strings without quotes, null as empty.
fn cell(v: &Option<serde_json::Value>) -> String {
    match v {
        None | Some(serde_json::Value::Null) => String::new(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// A content check as the probes print it: a CRC-32 in 8 hex digits (a verdict or
/// anything else as it came).
fn chk_cell(v: &Option<serde_json::Value>) -> String {
    match v.as_ref().and_then(serde_json::Value::as_u64) {
        Some(crc) if crc <= u64::from(u32::MAX) => format!("{crc:08x}"),
        _ => cell(v),
    }
}

async fn tests_submit(
    State(st): State<ApiState>,
    PortalUser(a): PortalUser,
    Form(f): Form<FormPairs>,
) -> Page {
    check_csrf(&a, &f)?;
    let url = field(&f, "url").unwrap_or("").to_owned();
    let locations: Vec<String> = f
        .iter()
        .filter(|(k, _)| k == "locations")
        .map(|(_, v)| v.clone())
        .collect();
    let repeat = field(&f, "repeat").is_some();
    let result = r::run_pagecheck(
        &st,
        &a,
        PageCheckBody {
            url: url.clone(),
            locations: locations.clone(),
            repeat,
            allow_hosts: Vec::new(),
        },
    )
    .await;
    let (status, body) = match result {
        Err(e @ ApiError::Invalid(_)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            html! { p class="error" id="pagecheck-error" { (e.message()) } (tests_form(&st, &a, &url, &locations)) },
        ),
        Err(e) => return Err(e.into()),
        Ok(ans) => (
            StatusCode::OK,
            html! {
                (tests_form(&st, &a, &url, &locations))
                h2 { "Overall" }
                table id="pagecheck-overall" {
                    tr { th { "Location" } th { "Pass" } th { "Result" } th { "Components" } th { "Page time (ms)" } th { "Bytes" } th { "Errors" } }
                    @for c in &ans.results {
                        @if c.ok {
                            @for (pass, rows) in passes(c) {
                                @let (total, bytes, errors) = pass_summary(&rows);
                                tr { td { (c.location) } td { (pass) } td class="ok" { "ok" }
                                     td class="num" { (rows.len()) } td class="num" { (format!("{total:.1}")) }
                                     td class="num" { (bytes) } td class="num" { (errors) } }
                            }
                        } @else {
                            tr { td { (c.location) } td {} td class="error" { (c.error.clone().unwrap_or_default()) }
                                 td {} td {} td {} td {} }
                        }
                    }
                }
                @for c in ans.results.iter().filter(|c| c.ok) {
                    @for (pass, rows) in passes(c) {
                        h2 { "From " (c.location) @if pass > 1 { ", pass " (pass) " (warm DNS)" } }
                        div class="waterfall" id=(format!("waterfall-{}-{pass}", c.location)) {
                            (PreEscaped(charts::waterfall(&format!("{} from {}, pass {pass}", ans.url, c.location), &rows)))
                        }
                        table class="raw-rows" {
                            tr { @for h in ["URL","IP","ERR","HRC","LEN","CHK","STT","DRT","COT","TLS","DST","FNT","END"] { th { (h) } } }
                            @for row in &rows {
                                tr { td { (row.url) } td { (opt(&row.ip)) } td { (cell(&row.err)) } td { (opt(&row.hrc)) }
                                     td class="num" { (opt(&row.len)) } td { (chk_cell(&row.chk)) }
                                     @for v in [row.stt,row.drt,row.cot,row.tls,row.dst,row.fnt,row.end] { td class="num" { (format!("{v:.3}")) } } }
                            }
                        }
                    }
                }
            },
        ),
    };
    let mut resp = layout(&a, "/tests", "Tests", false, body);
    *resp.status_mut() = status;
    Ok(resp)
}

// ---------------------------------------------------------------- GTM configuration

async fn gtm_page(
    State(st): State<ApiState>,
    PortalUser(a): PortalUser,
    Query(q): Query<ScopeQuery>,
) -> Page {
    gtm_view_page(&st, &a, &q, None).await
}

async fn gtm_view_page(st: &ApiState, a: &Auth, q: &ScopeQuery, error: Option<String>) -> Page {
    let scope = a.scope(q.customer.as_deref())?.map(str::to_owned);
    let snap = r::current(st).await?;
    let cfg = &snap.config;
    // Live health from the probes' records; a backend without a log store has none.
    let (checks, now) = match r::recent_checks(st).await {
        Ok(x) => x,
        Err(ApiError::NotFound) => (Vec::new(), crate::api::now()),
        Err(e) => return Err(e.into()),
    };
    let body = html! {
        @if let Some(e) = &error { p class="error" id="gtm-error" { (e) } }
        form method="post" action="/gtm/add" id="gtm-add" {
            (csrf_input(a))
            fieldset { legend { "Add a GTM domain" }
                input type="text" name="hostname" placeholder="www.example.com" required; " first address "
                input type="text" name="address" placeholder="192.0.2.10" required; " location "
                input type="text" name="site" placeholder="site name (optional)"; " "
                button type="submit" { "Add domain" } }
        }
        @for g in cfg.gtm.iter().filter(|g| scope.as_deref().is_none_or(|s| s == g.customer)) {
            @let view = r::gtm_view(cfg, g);
            @let health = r::gtm_health(cfg, g, &checks, now);
            @let base = format!("/gtm/{}", g.hostname);
            section class="gtm-domain" id=(format!("gtm-{}", g.hostname)) {
                h2 { (g.hostname) }
                form method="post" action=(format!("{base}/delete")) class="inline" {
                    (csrf_input(a)) button type="submit" { "Remove domain" } }
                table class="gtm-targets" { tr { th { "Location" } th { "Server" } th { "Addresses" } th { "Weight" } th { "Health" } th { "Last check" } th { "Probes" } th {} }
                    @for (t, h) in view.targets.iter().zip(&health.targets) {
                        tr data-server=(t.server) { td { (opt(&t.site)) } td { (t.server) }
                             td { @for x in &t.addresses { (x.to_string()) " " } } td class="num" { (t.weight) }
                             td class=(format!("health {}", h.status)) { (h.status) }
                             td { (h.last_check.clone().unwrap_or_else(|| "–".into())) }
                             td { @for p in &h.probes { span title=(p.detail) { (p.pop) ": " (p.state) } " " } }
                             td { form method="post" action=(format!("{base}/addresses/{}/delete", t.server)) class="inline" {
                                 (csrf_input(a)) button type="submit" { "Remove" } } } }
                    }
                }
                form method="post" action=(format!("{base}/addresses")) {
                    (csrf_input(a))
                    "Add address " input type="text" name="address" placeholder="192.0.2.11" required;
                    " location " input type="text" name="site" placeholder="site (optional)";
                    " weight " input type="number" name="weight" value="1" min="0";
                    " " button type="submit" { "Add address" }
                }
                @let m = view.monitor.clone();
                form method="post" action=(format!("{base}/monitor")) {
                    (csrf_input(a))
                    fieldset { legend { "Monitoring (service " (g.service) ")" }
                        "check " select name="kind" {
                            @for k in ["http", "https", "tcp", "dns", "ftp"] {
                                option value=(k) selected[m.as_ref().is_some_and(|m| serde_json::to_value(m.kind).ok() == Some(serde_json::Value::String(k.into())))] { (k) }
                            }
                        }
                        " path " input type="text" name="path" value=(m.as_ref().map(|m| m.path.clone()).unwrap_or_else(|| "/".into()));
                        " expect " input type="text" name="expect_content" value=(m.as_ref().and_then(|m| m.expect_content.clone()).unwrap_or_default());
                        " every " input type="number" name="interval_secs" value=(m.as_ref().map(|m| m.interval_secs).unwrap_or(10)) min="1"; " s"
                        " timeout " input type="number" name="timeout_ms" value=(m.as_ref().map(|m| m.timeout_ms).unwrap_or(4000)) min="1"; " ms "
                        label { input type="checkbox" name="tls_verify" value="on" checked[m.as_ref().is_none_or(|m| m.tls_verify)]; " check the certificate (https) " }
                        " ftp user " input type="text" name="ftp_user" placeholder="anonymous" value=(m.as_ref().and_then(|m| m.ftp_user.clone()).unwrap_or_default());
                        " password " input type="password" name="ftp_password" autocomplete="off" placeholder="(unchanged if empty)";
                        " "
                        button type="submit" { "Save monitoring" }
                    }
                }
            }
        }
    };
    Ok(layout(a, "/gtm", "GTM Configuration", false, body))
}

async fn gtm_result(st: &ApiState, a: &Auth, r: Result<(), ApiError>) -> Page {
    match r {
        Ok(()) => Ok(Redirect::to("/gtm").into_response()),
        Err(e @ ApiError::Invalid(_)) => {
            let mut resp = gtm_view_page(st, a, &ScopeQuery::default(), Some(e.message())).await?;
            *resp.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
            Ok(resp)
        }
        Err(e) => Err(e.into()),
    }
}

fn parse_ip(f: &FormPairs, name: &str) -> Result<Option<std::net::IpAddr>, ApiError> {
    match field(f, name) {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| ApiError::field(name, format!("not an IP address: {v:?}"))),
    }
}

async fn gtm_add(
    State(st): State<ApiState>,
    PortalUser(a): PortalUser,
    Form(f): Form<FormPairs>,
) -> Page {
    check_csrf(&a, &f)?;
    let r = async {
        let host = field(&f, "hostname").unwrap_or("").trim().to_owned();
        let address = parse_ip(&f, "address")?;
        let customer = a
            .user
            .customer
            .clone()
            .ok_or_else(|| ApiError::field("customer", "admins add domains through the API"))?;
        let a2 = a.clone();
        let n = NewAddress {
            address,
            server: None,
            site: field(&f, "site").map(str::to_owned),
            weight: None,
        };
        r::mutate(&st, &a, move |cfg| {
            r::check_names(cfg, &customer, Some(&host), &[])?;
            add_pending_gtm(cfg, "hostname", &host, &customer, &a2, &n)
        })
        .await
        .map(|_| ())
    }
    .await;
    gtm_result(&st, &a, r).await
}

/// Adds GTM hostname `host` of `customer` with its first address `first` to `cfg`:
/// pending until its TXT challenge is verified, testing the service `http` (else the
/// first service). A bad hostname is an error on form field `field`.
pub(crate) fn add_pending_gtm(
    cfg: &mut udn_core::Config,
    field: &str,
    host: &str,
    customer: &str,
    a: &crate::api::auth::Auth,
    first: &NewAddress,
) -> Result<(), ApiError> {
    let service = if cfg.services.iter().any(|s| s.name == "http") {
        "http".to_owned()
    } else {
        cfg.services
            .first()
            .map(|s| s.name.clone())
            .unwrap_or_default()
    };
    let mut g: udn_core::config::GtmConfig = serde_json::from_value(serde_json::json!({
        "hostname": host, "customer": customer, "service": service, "targets": []
    }))
    .map_err(|e| ApiError::field(field, e.to_string()))?;
    g.challenge = Some(crate::api::challenge::new_token());
    cfg.gtm.push(g);
    let i = cfg.gtm.len() - 1;
    r::add_address(cfg, i, a, first).map(|_| ())
}

async fn gtm_delete(
    State(st): State<ApiState>,
    PortalUser(a): PortalUser,
    Path(host): Path<String>,
    Form(f): Form<FormPairs>,
) -> Page {
    check_csrf(&a, &f)?;
    let r = r::with_gtm(&st, &a, host, |cfg, i| {
        cfg.gtm.remove(i);
        Ok(())
    })
    .await;
    gtm_result(&st, &a, r).await
}

async fn gtm_address_add(
    State(st): State<ApiState>,
    PortalUser(a): PortalUser,
    Path(host): Path<String>,
    Form(f): Form<FormPairs>,
) -> Page {
    check_csrf(&a, &f)?;
    let r = async {
        let n = NewAddress {
            address: parse_ip(&f, "address")?,
            server: None,
            site: field(&f, "site").map(str::to_owned),
            weight: match field(&f, "weight") {
                None => None,
                Some(w) => Some(
                    w.parse()
                        .map_err(|_| ApiError::field("weight", "a whole number"))?,
                ),
            },
        };
        let a2 = a.clone();
        r::with_gtm(&st, &a, host, move |cfg, i| r::add_address(cfg, i, &a2, &n)).await
    }
    .await;
    gtm_result(&st, &a, r).await
}

async fn gtm_address_delete(
    State(st): State<ApiState>,
    PortalUser(a): PortalUser,
    Path((host, key)): Path<(String, String)>,
    Form(f): Form<FormPairs>,
) -> Page {
    check_csrf(&a, &f)?;
    let r = r::with_gtm(&st, &a, host, move |cfg, i| {
        let t = r::target_index(cfg, i, &key).ok_or(ApiError::NotFound)?;
        cfg.gtm[i].targets.remove(t);
        Ok(())
    })
    .await;
    gtm_result(&st, &a, r).await
}

async fn gtm_monitor(
    State(st): State<ApiState>,
    PortalUser(a): PortalUser,
    Path(host): Path<String>,
    Form(f): Form<FormPairs>,
) -> Page {
    check_csrf(&a, &f)?;
    let mut v = serde_json::Map::new();
    for k in ["kind", "path", "expect_content"] {
        if let Some(x) = field(&f, k) {
            v.insert(k.into(), serde_json::Value::String(x.to_owned()));
        }
    }
    // An unticked checkbox is not sent at all.
    v.insert(
        "tls_verify".into(),
        serde_json::Value::Bool(field(&f, "tls_verify").is_some()),
    );
    // FTP login: an empty user is anonymous; an empty password keeps the saved one (the
    // page never shows it).
    if let Some(u) = field(&f, "ftp_user").filter(|u| !u.is_empty()) {
        v.insert("ftp_user".into(), serde_json::Value::String(u.to_owned()));
    }
    let new_password = field(&f, "ftp_password")
        .filter(|p| !p.is_empty())
        .map(str::to_owned);
    let mut bad = None;
    for k in ["interval_secs", "timeout_ms"] {
        if let Some(x) = field(&f, k) {
            match x.trim().parse::<u64>() {
                Ok(n) => {
                    v.insert(k.into(), serde_json::Value::from(n));
                }
                Err(_) => bad = Some(ApiError::field(k, "a whole number")),
            }
        }
    }
    let r = match bad {
        Some(e) => Err(e),
        None => {
            r::with_gtm(&st, &a, host, move |cfg, i| {
                if let Some(p) = new_password {
                    v.insert("ftp_password".into(), serde_json::Value::String(p));
                }
                r::set_monitor(cfg, i, serde_json::Value::Object(v)).map(|_| ())
            })
            .await
        }
    };
    gtm_result(&st, &a, r).await
}

// ---------------------------------------------------------------- invoices

/// Admins: the billing run log (CLI, API, scheduler), newest first, with failures and
/// retry attempts.
async fn billing_runs(State(st): State<ApiState>, PortalUser(a): PortalUser) -> Page {
    if a.user.role != Role::Admin {
        return Err(ApiError::Forbidden.into());
    }
    let runs = st.db(move |b| b.billing.billing_runs(100)).await?;
    let runs = runs.as_array().cloned().unwrap_or_default();
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let at = |v: &serde_json::Value| fmt_time(Timestamp::from_millis(v.as_u64().unwrap_or(0)));
    let body = html! {
        table id="billing-runs" {
            tr { th { "Period" } th { "Trigger" } th { "Attempt" } th { "Outcome" } th { "Finished" } th { "Detail" } }
            @for r in &runs {
                tr class=(text(&r["outcome"])) {
                    td { (text(&r["period"])) } td { (text(&r["trigger"])) }
                    td class="num" { (text(&r["attempt"])) } td { (text(&r["outcome"])) }
                    td { (at(&r["finished_at"])) }
                    td { code { (text(&r["detail"]).chars().take(300).collect::<String>()) } }
                }
            }
        }
        @if runs.is_empty() { p { "No billing runs yet." } }
    };
    Ok(layout(&a, "/invoices", "Billing runs", false, body))
}

async fn invoices(
    State(st): State<ApiState>,
    PortalUser(a): PortalUser,
    Query(q): Query<ScopeQuery>,
) -> Page {
    let scope = a.scope(q.customer.as_deref())?.map(str::to_owned);
    let list = st.db(move |b| b.billing.invoices(scope.as_deref())).await?;
    let body = html! {
        table id="invoices" {
            tr { th { "Number" } th { "Customer" } th { "Period" } th { "Total" } th { "Issued" } }
            @for i in &list {
                tr { td { a href=(format!("/invoices/{}", i.id)) { (i.number) } } td { (i.customer) }
                     td { (fmt_time(i.period_start)) " – " (fmt_time(i.period_end)) }
                     td class="num" { (i.total.to_string()) " " (i.currency) } td { (fmt_time(i.issued_at)) } }
            }
        }
        @if list.is_empty() { p { "No invoices yet." } }
        @if a.user.role == Role::Admin {
            p { a href="/billing-runs" id="billing-runs-link" { "Billing runs (scheduler, failures, retries)" } }
        }
    };
    Ok(layout(&a, "/invoices", "Invoices", false, body))
}

async fn invoice(
    State(st): State<ApiState>,
    PortalUser(a): PortalUser,
    Path(id): Path<i64>,
) -> Page {
    let inv = r::load_invoice(&st, &a, id).await?;
    let body = html! {
        p { "Invoice " strong id="invoice-number" { (inv.summary.number) } " for " (inv.summary.customer)
            ", total " (inv.summary.total.to_string()) " " (inv.summary.currency)
            " · " a href=(format!("/v1/invoices/{id}/pdf")) id="invoice-pdf" { "Download PDF" } }
        // Billing renders a whole document (its own A4 print stylesheet): it is shown in
        // a sandboxed frame, so its styles stay out of the portal's and no script runs.
        iframe class="invoice-body" title=(format!("Invoice {}", inv.summary.number))
            sandbox="" srcdoc=(inv.html) style="width:100%;height:80vh;border:1px solid #ddd" {}
    };
    Ok(layout(
        &a,
        "/invoices",
        &format!("Invoice {}", inv.summary.number),
        false,
        body,
    ))
}

// ---------------------------------------------------------------- start-up

/// How `udn control` runs the API and the portal.
#[derive(Debug, Clone)]
pub struct PortalConfig {
    /// Where the portal and the API listen over HTTPS.
    pub https: std::net::SocketAddr,
    /// Where the API also listens over plain HTTP for machines on the internal network
    /// (config distribution to DNS servers, edges and probes); `None`: not at all.
    pub http: Option<std::net::SocketAddr>,
    /// The certificate.
    pub cert: CertSource,
    /// Edges, probes and tokens.
    pub options: crate::api::ControlOptions,
    /// Committed as the first config version when the store has none yet.
    pub seed_config: Option<udn_core::Config>,
    /// Admin user (name, password) created when the store has no users yet.
    pub bootstrap_admin: Option<(String, String)>,
}

/// A running control-plane front end.
#[derive(Debug)]
pub struct PortalHandle {
    /// Bound HTTPS address.
    pub https: std::net::SocketAddr,
    /// Bound plain-HTTP address, if any.
    pub http: Option<std::net::SocketAddr>,
    /// The certificate in PEM (to pin it in clients).
    pub cert_pem: String,
    /// The handlers' state (backend, options).
    pub state: ApiState,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl PortalHandle {
    /// Stops the servers and the purge delivery tasks.
    pub fn shutdown(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for PortalHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Seeds the store if empty, starts the purge distributor and serves [`app`] over
/// HTTPS (and plain HTTP when configured).
pub async fn start(
    stores: impl Into<crate::api::Stores>,
    cfg: PortalConfig,
) -> anyhow::Result<PortalHandle> {
    use anyhow::Context as _;
    crate::install_crypto();
    let stores = stores.into();
    // Backends block (and the PostgreSQL one refuses to run on an async thread).
    let state = {
        let seed = cfg.seed_config.clone();
        let admin = cfg.bootstrap_admin.clone();
        let options = cfg.options.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<ApiState> {
            if let Some(seed) = &seed
                && stores.configs.current_config()?.version == 0
            {
                stores
                    .configs
                    .commit_config(0, seed, "bootstrap", crate::logging::now())
                    .context("seeding the configuration")?;
            }
            if let Some((user, pass)) = &admin
                && stores.accounts.users()?.is_empty()
            {
                stores
                    .accounts
                    .create_user(user, pass, Role::Admin, None)
                    .context("creating the first admin")?;
            }
            Ok(ApiState::new(stores, options)?)
        })
    };
    let state = state.await.context("seeding task")??;
    let mut tasks = state.start_purge_distributor();
    let (tls, cert_pem) = server_config(&cfg.cert)?;
    let (https, t) = serve_https(cfg.https, app(state.clone()), tls)
        .await
        .with_context(|| format!("binding the portal on {}", cfg.https))?;
    tasks.push(t);
    let http = match cfg.http {
        Some(addr) => {
            let (bound, t) =
                crate::api::serve_http(addr, crate::api::machine_router(state.clone()))
                    .await
                    .with_context(|| format!("binding the internal API on {addr}"))?;
            tasks.push(t);
            Some(bound)
        }
        None => None,
    };
    Ok(PortalHandle {
        https,
        http,
        cert_pem,
        state,
        tasks,
    })
}
