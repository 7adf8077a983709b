//! Self sign-up (the seed's FIG. 4, steps 403-411), when the operator enables it with
//! `udn control --self-signup`:
//!
//! 1. `GET /signup`: a prospective customer gives the company, postal address,
//!    contact, e-mail, invoicing (e-mail, post or card on file), the service (GTM, or
//!    GTM and CDN), a published plan, the account name, a first domain with its address
//!    and a user name. `POST /signup` checks every field (the errors name the fields;
//!    a name or domain already taken is refused), then e-mails a confirmation link
//!    through the configured SMTP server. Nothing is stored yet: the link carries the
//!    request, signed with the control plane's key (HMAC-SHA256, `<data-dir>/signup.key`)
//!    and valid for 24 hours, so a stranger's sign-ups cannot fill any table.
//! 2. `GET /signup/confirm?t=...`: the link proves the address; the customer chooses a
//!    password, and `POST /signup/confirm` creates the customer with its first domain
//!    (pending its DNS TXT check, as every new domain), its first user and its billing
//!    account, and marks the sign-up awaiting approval.
//! 3. Operators see every sign-up at `/signups` (and `GET /v1/signups`) and approve or
//!    refuse it. Until approved, the customer's domains cannot be verified, so nothing
//!    it configured goes live; a refusal removes the customer, its users and domains.
//!
//! Against a flood: at most [`PER_ADDRESS`] sign-up submissions per client address and
//! [`PER_RECIPIENT`] confirmation e-mails per recipient per hour (one bounded table),
//! field sizes bounded, the first address checked against the customer-destination
//! policy, and the e-mail goes only to the address given, with the link built from the configured public URL (never the request's
//! `Host`, which a stranger could point at a server of theirs).

use super::*;
use crate::api::backend::{SignupStatus, User};
use crate::billing::SmtpConfig;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// Sign-up settings of the control plane (`--self-signup`).
#[derive(Clone)]
pub struct SignupOptions {
    /// The portal's public base URL (`https://portal.udn.example`): confirmation links
    /// point there.
    pub public_url: String,
    /// The SMTP server the confirmation e-mails go through.
    pub smtp: SmtpConfig,
    /// The HMAC key confirmation links are signed with.
    pub key: Arc<[u8; 32]>,
    /// How long a confirmation link works.
    pub link_ttl: Duration,
}

impl std::fmt::Debug for SignupOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignupOptions")
            .field("public_url", &self.public_url)
            .field(
                "smtp",
                &format_args!("{}:{}", self.smtp.host, self.smtp.port),
            )
            .finish_non_exhaustive()
    }
}

impl SignupOptions {
    /// Reads the key from `path`, creating it (32 random bytes, mode 0600) the first
    /// time.
    pub fn load_key(path: &std::path::Path) -> anyhow::Result<Arc<[u8; 32]>> {
        use anyhow::Context as _;
        if let Ok(b) = std::fs::read(path) {
            let key: [u8; 32] = b
                .try_into()
                .map_err(|_| anyhow::anyhow!("{} is not a 32-byte key", path.display()))?;
            return Ok(Arc::new(key));
        }
        let mut key = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut key);
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
        let mut f = o
            .open(path)
            .with_context(|| format!("creating {}", path.display()))?;
        std::io::Write::write_all(&mut f, &key)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(Arc::new(key))
    }
}

/// Sign-up submissions one client address may make per hour.
pub const PER_ADDRESS: u32 = 5;
/// Client addresses the limiter remembers at most (older windows are dropped first).
const LIMITER_ENTRIES: usize = 10_000;

/// Confirmation e-mails one address may receive per hour.
pub const PER_RECIPIENT: u32 = 3;

/// Submissions per client address, and e-mails per recipient, in the current hour.
#[derive(Default)]
pub struct SignupLimiter {
    seen: std::collections::HashMap<String, (u32, std::time::Instant)>,
}

impl SignupLimiter {
    /// Counts a submission from client `ip`; `false` when it is over the limit (or the
    /// table is full of live windows).
    fn allow(&mut self, ip: IpAddr) -> bool {
        self.count(format!("ip {ip}"), PER_ADDRESS)
    }

    /// Counts a confirmation e-mail to `email`.
    fn allow_mail(&mut self, email: &str) -> bool {
        self.count(
            format!("mail {}", email.to_ascii_lowercase()),
            PER_RECIPIENT,
        )
    }

    fn count(&mut self, key: String, limit: u32) -> bool {
        let now = std::time::Instant::now();
        let hour = Duration::from_secs(3600);
        if self.seen.len() >= LIMITER_ENTRIES && !self.seen.contains_key(&key) {
            self.seen.retain(|_, (_, t)| now.duration_since(*t) < hour);
            if self.seen.len() >= LIMITER_ENTRIES {
                return false;
            }
        }
        let e = self.seen.entry(key).or_insert((0, now));
        if now.duration_since(e.1) >= hour {
            *e = (0, now);
        }
        e.0 += 1;
        e.0 <= limit
    }
}

/// What a prospective customer asked for: carried, signed, in the confirmation link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignupRequest {
    /// Account (and customer) name.
    pub account: String,
    /// Company.
    pub company: String,
    /// Postal address lines.
    pub address: Vec<String>,
    /// Contact person.
    pub contact: String,
    /// E-mail address (confirmed by the link).
    pub email: String,
    /// Tax id.
    pub tax_id: Option<String>,
    /// `email`, `post` or `card`.
    pub invoicing: String,
    /// `gtm` or `gtm_cdn`.
    pub service: String,
    /// Plan id.
    pub plan: String,
    /// The first domain (a GTM hostname).
    pub domain: String,
    /// Its first address.
    pub ip: IpAddr,
    /// The first user's login name.
    pub username: String,
    /// When the link stops working (ms since the epoch).
    pub expires: u64,
}

/// The bytes of a hex field of a link token; `None` past 16 KiB of hex (a link is
/// never that long).
fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() > 16_384 {
        return None;
    }
    udn_core::hex::decode(s)
}

/// The signed link token of `req`: hex of its JSON, a dot, hex of the HMAC-SHA256.
pub fn sign(req: &SignupRequest, key: &[u8; 32]) -> String {
    let body = udn_core::hex::encode(&serde_json::to_vec(req).unwrap_or_default());
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let tag = ring::hmac::sign(&k, body.as_bytes());
    format!("{body}.{}", udn_core::hex::encode(tag.as_ref()))
}

/// The request in a link token, if its signature is right (compared in constant time)
/// and it has not expired.
pub fn verify(token: &str, key: &[u8; 32], now: Timestamp) -> Result<SignupRequest, &'static str> {
    let (body, tag) = token.split_once('.').ok_or("not a confirmation link")?;
    let tag = unhex(tag).ok_or("not a confirmation link")?;
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    ring::hmac::verify(&k, body.as_bytes(), &tag).map_err(|_| "this link is not valid")?;
    let json = unhex(body).ok_or("not a confirmation link")?;
    let req: SignupRequest =
        serde_json::from_slice(&json).map_err(|_| "not a confirmation link")?;
    if now.as_millis() > req.expires {
        return Err("this link has expired: sign up again");
    }
    Ok(req)
}

fn text_ok(s: &str, max: usize) -> bool {
    !s.trim().is_empty() && s.chars().count() <= max && !s.chars().any(char::is_control)
}

/// Checks a sign-up form; every field at fault is named.
fn parse_form(
    f: &FormPairs,
    plans: &[crate::api::backend::SignupPlan],
    now: Timestamp,
    ttl: Duration,
) -> Result<SignupRequest, Vec<crate::api::FieldError>> {
    let mut errs = Vec::new();
    let mut bad = |field: &str, message: &str| {
        errs.push(crate::api::FieldError {
            field: field.to_owned(),
            message: message.to_owned(),
        })
    };
    let get = |k: &str| field(f, k).unwrap_or("").trim().to_owned();
    let account = get("account");
    if !(account.len() >= 2
        && account.len() <= 40
        && account
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-'))
    {
        bad("account", "2 to 40 lower-case letters, digits or -");
    }
    let company = get("company");
    if !text_ok(&company, 200) {
        bad("company", "1 to 200 characters");
    }
    let address: Vec<String> = get("address")
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect();
    if address.is_empty() || address.len() > 6 || !address.iter().all(|l| text_ok(l, 100)) {
        bad("address", "1 to 6 lines of at most 100 characters");
    }
    let contact = get("contact");
    if !text_ok(&contact, 100) {
        bad("contact", "1 to 100 characters");
    }
    let email = get("email");
    if email.len() > 254 || email.parse::<lettre::Address>().is_err() {
        bad("email", "an e-mail address such as billing@example.com");
    }
    let tax_id = Some(get("tax_id")).filter(|t| !t.is_empty());
    if tax_id.as_deref().is_some_and(|t| !text_ok(t, 50)) {
        bad("tax_id", "at most 50 characters");
    }
    let invoicing = get("invoicing");
    if !["email", "post", "card"].contains(&invoicing.as_str()) {
        bad("invoicing", "email, post or card");
    }
    let service = get("service");
    if !["gtm", "gtm_cdn"].contains(&service.as_str()) {
        bad("service", "gtm or gtm_cdn");
    }
    let plan = get("plan");
    match plans.iter().find(|p| p.id == plan) {
        None => bad("plan", "one of the published plans"),
        Some(p) if p.uses_cdn && service == "gtm" => bad(
            "service",
            "this plan charges for CDN traffic: choose GTM and CDN, or another plan",
        ),
        Some(_) => {}
    }
    let domain = udn_core::config::canonical_hostname(&get("domain"));
    if domain.len() > 253
        || !domain.contains('.')
        || !domain.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
        })
    {
        bad("domain", "a host name such as www.example.com");
    }
    let ip = get("ip").parse::<IpAddr>();
    if ip.is_err() {
        bad("ip", "an IPv4 or IPv6 address");
    }
    let username = get("username");
    if !(username.len() >= 3
        && username.len() <= 64
        && username
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')))
    {
        bad("username", "3 to 64 letters, digits, -, _ or .");
    }
    match ip {
        Ok(ip) if errs.is_empty() => Ok(SignupRequest {
            account,
            company,
            address,
            contact,
            email,
            tax_id,
            invoicing,
            service,
            plan,
            domain,
            ip,
            username,
            expires: now.as_millis() + ttl.as_millis() as u64,
        }),
        _ => Err(errs),
    }
}

/// Whether the names in `req` are still free: the account, the user name and the
/// domain (refused when another customer has it or it is configured already).
async fn check_free(st: &ApiState, req: &SignupRequest) -> Result<(), Vec<crate::api::FieldError>> {
    let mut errs = Vec::new();
    let mut taken = |field: &str, message: String| {
        errs.push(crate::api::FieldError {
            field: field.to_owned(),
            message,
        })
    };
    let Ok(snap) = r::current(st).await else {
        taken(
            "account",
            "the service is unavailable; try again later".into(),
        );
        return Err(errs);
    };
    let cfg = &snap.config;
    if cfg.customers.iter().any(|c| c.name == req.account) {
        taken("account", format!("{} is already taken", req.account));
    }
    if let Err(ApiError::Taken(e)) = r::check_names(cfg, &req.account, Some(&req.domain), &[]) {
        taken("domain", e.message);
    }
    if let Err(ApiError::Invalid(e)) = r::check_destination(cfg, "ip", req.ip) {
        for e in e {
            taken("ip", e.message);
        }
    }
    match st.db(|b| b.accounts.users()).await {
        Ok(users) if users.iter().any(|u| u.username == req.username) => {
            taken("username", format!("{} is already taken", req.username));
        }
        Ok(_) => {}
        Err(_) => taken(
            "username",
            "the service is unavailable; try again later".into(),
        ),
    }
    if errs.is_empty() { Ok(()) } else { Err(errs) }
}

fn page(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" { head { meta charset="utf-8"; meta name="viewport" content="width=device-width, initial-scale=1"; title { "UDN: " (title) } (style()) }
        body { main { h1 { (title) } (body) } } }
    }
}

const SIGNUP_CSRF: FormCsrf = FormCsrf {
    cookie: "udn_signup_csrf",
    path: "/signup",
};

fn options(st: &ApiState) -> Result<&SignupOptions, PortalError> {
    st.inner
        .opts
        .signup
        .as_ref()
        .ok_or(PortalError(ApiError::NotFound))
}

fn form(
    token: &str,
    plans: &[crate::api::backend::SignupPlan],
    f: &FormPairs,
    errors: &[crate::api::FieldError],
) -> Markup {
    let v = |k: &str| field(f, k).unwrap_or("").to_owned();
    let sel = |k: &str, want: &str| field(f, k) == Some(want);
    page(
        "Sign up",
        html! {
            @if !errors.is_empty() {
                ul class="error" id="signup-errors" {
                    @for e in errors { li class="field-error" data-field=(e.field) { strong { (e.field) } ": " (e.message) } }
                }
            }
            form method="post" action="/signup" id="signup" {
                input type="hidden" name="csrf" value=(token);
                fieldset { legend { "Your company" }
                    p { label { "Company " input type="text" name="company" id="company" maxlength="200" required value=(v("company")); } }
                    p { label { "Postal address (one line each) " textarea name="address" id="address" rows="3" required { (v("address")) } } }
                    p { label { "Contact person " input type="text" name="contact" id="contact" maxlength="100" required value=(v("contact")); } }
                    p { label { "E-mail " input type="email" name="email" id="email" maxlength="254" required value=(v("email")); } }
                    p { label { "Tax id (optional) " input type="text" name="tax_id" id="tax_id" maxlength="50" value=(v("tax_id")); } }
                }
                fieldset { legend { "Service and invoicing" }
                    p { "Service "
                        label { input type="radio" name="service" value="gtm" checked[!sel("service", "gtm_cdn")]; " GTM only" }
                        label { input type="radio" name="service" value="gtm_cdn" checked[sel("service", "gtm_cdn")]; " GTM and CDN" } }
                    p { label { "Plan " select name="plan" id="plan" {
                        @for p in plans { option value=(p.id) selected[sel("plan", &p.id)] { (p.name) " (" (p.currency) " per " (p.period) @if p.uses_cdn { ", CDN usage" } ")" } }
                    } } }
                    p { "Invoices "
                        label { input type="radio" name="invoicing" value="email" checked[!sel("invoicing", "post") && !sel("invoicing", "card")]; " by e-mail" }
                        label { input type="radio" name="invoicing" value="post" checked[sel("invoicing", "post")]; " by post" }
                        label { input type="radio" name="invoicing" value="card" checked[sel("invoicing", "card")]; " card on file" } }
                }
                fieldset { legend { "Your account" }
                    p { label { "Account name " input type="text" name="account" id="account" maxlength="40" required value=(v("account")); } }
                    p { label { "User name " input type="text" name="username" id="username" maxlength="64" autocomplete="username" required value=(v("username")); } }
                    p { label { "First domain " input type="text" name="domain" id="domain" maxlength="253" placeholder="www.example.com" required value=(v("domain")); } }
                    p { label { "Its address " input type="text" name="ip" id="ip" maxlength="45" placeholder="192.0.2.10" required value=(v("ip")); } }
                }
                p { button type="submit" id="signup-submit" { "Sign up" } }
            }
            p { "Already a customer? " a href="/login" { "Log in" } }
        },
    )
}

/// `GET /signup`.
pub(super) async fn signup_page(State(st): State<ApiState>, IsTls(tls): IsTls) -> Page {
    options(&st)?;
    let plans = st.db(|b| b.billing.signup_plans()).await?;
    Ok(SIGNUP_CSRF.respond(tls, StatusCode::OK, |t| form(t, &plans, &Vec::new(), &[])))
}

/// `POST /signup`.
pub(super) async fn signup_submit(
    State(st): State<ApiState>,
    IsTls(tls): IsTls,
    ClientIp(ip): ClientIp,
    headers: axum::http::HeaderMap,
    Form(f): Form<FormPairs>,
) -> Page {
    let opts = options(&st)?.clone();
    let plans = st.db(|b| b.billing.signup_plans()).await?;
    let again = |status: StatusCode, errors: Vec<crate::api::FieldError>| {
        SIGNUP_CSRF.respond(tls, status, |t| form(t, &plans, &f, &errors))
    };
    if !SIGNUP_CSRF.check(&headers, &f) {
        return Ok(again(
            StatusCode::FORBIDDEN,
            vec![crate::api::FieldError {
                field: "form".into(),
                message: "the form expired; please send it again".into(),
            }],
        ));
    }
    let allowed = ip.is_none_or(|ip| {
        st.inner
            .signup_limiter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .allow(ip)
    });
    if !allowed {
        return Ok(again(
            StatusCode::TOO_MANY_REQUESTS,
            vec![crate::api::FieldError {
                field: "form".into(),
                message: "too many sign-ups from your address; try again in an hour".into(),
            }],
        ));
    }
    let req = match parse_form(&f, &plans, crate::logging::now(), opts.link_ttl) {
        Ok(r) => r,
        Err(errors) => return Ok(again(StatusCode::UNPROCESSABLE_ENTITY, errors)),
    };
    if let Err(errors) = check_free(&st, &req).await {
        return Ok(again(StatusCode::CONFLICT, errors));
    }
    let mail_ok = st
        .inner
        .signup_limiter
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .allow_mail(&req.email);
    if !mail_ok {
        return Ok(again(
            StatusCode::TOO_MANY_REQUESTS,
            vec![crate::api::FieldError {
                field: "email".into(),
                message:
                    "this address got several confirmation e-mails already; try again in an hour"
                        .into(),
            }],
        ));
    }
    let link = format!(
        "{}/signup/confirm?t={}",
        opts.public_url.trim_end_matches('/'),
        sign(&req, &opts.key)
    );
    let to = req.email.clone();
    let text = format!(
        "Someone, we hope you, asked to open the UDN account \"{}\" for {}.\n\n\
         To confirm this address and choose your password, open this link within {} hours:\n\n{link}\n\n\
         If it was not you, ignore this message: nothing was created.\n",
        req.account,
        req.company,
        opts.link_ttl.as_secs() / 3600
    );
    let sent = tokio::task::spawn_blocking(move || send_mail(&opts.smtp, &to, &text)).await;
    match sent {
        Ok(Ok(())) => Ok(page(
            "Check your e-mail",
            html! { p id="signup-sent" { "We sent a confirmation link to " strong { (req.email) } ". Open it to choose your password; it works for 24 hours." } },
        )
        .into_response()),
        Ok(Err(e)) => {
            tracing::warn!("sign-up e-mail to {}: {e:#}", req.email);
            Err(PortalError(ApiError::Unavailable(
                "the confirmation e-mail could not be sent; try again later".into(),
            )))
        }
        Err(_) => Err(PortalError(ApiError::Internal("mail task failed".into()))),
    }
}

fn send_mail(smtp: &SmtpConfig, to: &str, text: &str) -> anyhow::Result<()> {
    use lettre::Transport as _;
    let msg = lettre::Message::builder()
        .from(smtp.from.parse()?)
        .to(to.parse()?)
        .subject("Confirm your UDN sign-up")
        .header(lettre::message::header::ContentType::TEXT_PLAIN)
        .body(text.to_owned())?;
    smtp.transport()?.send(&msg)?;
    Ok(())
}

#[derive(Deserialize)]
pub(super) struct ConfirmQuery {
    t: Option<String>,
}

fn confirm_form(token: &str, link: &str, req: &SignupRequest, error: Option<&str>) -> Markup {
    page(
        "Choose your password",
        html! {
            p { "Account " strong id="confirm-account" { (req.account) } " for " (req.company) ", user " strong { (req.username) } "." }
            @if let Some(e) = error { p class="error" id="confirm-error" { (e) } }
            form method="post" action="/signup/confirm" id="confirm" {
                input type="hidden" name="csrf" value=(token);
                input type="hidden" name="t" value=(link);
                p { label { "Password (at least 10 characters) " input type="password" name="password" id="password" autocomplete="new-password" minlength="10" required; } }
                p { label { "Again " input type="password" name="password2" id="password2" autocomplete="new-password" minlength="10" required; } }
                p { button type="submit" id="confirm-submit" { "Create my account" } }
            }
        },
    )
}

/// `GET /signup/confirm?t=...`: the link from the e-mail.
pub(super) async fn confirm_page(
    State(st): State<ApiState>,
    IsTls(tls): IsTls,
    Query(q): Query<ConfirmQuery>,
) -> Page {
    let opts = options(&st)?;
    let link = q.t.unwrap_or_default();
    match verify(&link, &opts.key, crate::logging::now()) {
        Ok(req) => {
            Ok(SIGNUP_CSRF.respond(tls, StatusCode::OK, |t| confirm_form(t, &link, &req, None)))
        }
        Err(why) => Err(PortalError(ApiError::BadRequest(why.into()))),
    }
}

/// `POST /signup/confirm`: creates the customer, its user, domain and billing account.
pub(super) async fn confirm_submit(
    State(st): State<ApiState>,
    IsTls(tls): IsTls,
    headers: axum::http::HeaderMap,
    Form(f): Form<FormPairs>,
) -> Page {
    let opts = options(&st)?.clone();
    let link = field(&f, "t").unwrap_or("").to_owned();
    let req = verify(&link, &opts.key, crate::logging::now())
        .map_err(|why| PortalError(ApiError::BadRequest(why.into())))?;
    let again = |status: StatusCode, msg: &str| {
        SIGNUP_CSRF.respond(tls, status, |t| confirm_form(t, &link, &req, Some(msg)))
    };
    if !SIGNUP_CSRF.check(&headers, &f) {
        return Ok(again(
            StatusCode::FORBIDDEN,
            "the form expired; please send it again",
        ));
    }
    let password = field(&f, "password").unwrap_or("").to_owned();
    if password.chars().count() < 10 || password.len() > 256 {
        return Ok(again(
            StatusCode::UNPROCESSABLE_ENTITY,
            "password: 10 to 256 characters",
        ));
    }
    if field(&f, "password2") != Some(password.as_str()) {
        return Ok(again(
            StatusCode::UNPROCESSABLE_ENTITY,
            "password: the two entries differ",
        ));
    }
    if let Err(errors) = check_free(&st, &req).await {
        let msg: Vec<String> = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect();
        return Ok(again(StatusCode::CONFLICT, &msg.join("; ")));
    }
    create(&st, &req, &password).await?;
    Ok(page(
        "Your account is ready",
        html! {
            p id="signup-done" { "Account " strong { (req.account) } " and user " strong { (req.username) } " are created. "
                "Your domain " strong { (req.domain) } " waits for its DNS check, and an operator reviews new accounts before anything goes live." }
            p { a href="/login" id="to-login" { "Log in" } }
        },
    )
    .into_response())
}

/// The author of the sign-up's configuration changes (`username` in the version log).
fn author(username: String, role: Role, customer: Option<String>) -> Auth {
    Auth {
        user: User {
            id: 0,
            username,
            role,
            customer,
        },
        kind: SessionKind::Bearer,
        csrf: String::new(),
        token: String::new(),
        scopes: None,
    }
}

/// The new customer, as the author of its own first configuration change.
fn signup_auth(req: &SignupRequest) -> Auth {
    author(
        format!("signup:{}", req.username),
        Role::Customer,
        Some(req.account.clone()),
    )
}

/// The three stores in order, each undone when a later one fails: the configuration
/// (customer and domain), the user, the billing account. They are not one database
/// transaction (the configuration is versioned apart from the billing tables), so a
/// failure part-way removes what was made.
async fn create(st: &ApiState, req: &SignupRequest, password: &str) -> Result<(), PortalError> {
    let plans = st.db(|b| b.billing.signup_plans()).await?;
    let plan = plans
        .iter()
        .find(|p| p.id == req.plan)
        .cloned()
        .ok_or_else(|| ApiError::field("plan", "no longer offered; sign up again"))?;
    let auth = signup_auth(req);
    let (r2, a2) = (req.clone(), auth.clone());
    r::mutate(st, &auth, move |cfg| {
        if cfg.customers.iter().any(|c| c.name == r2.account) {
            return Err(ApiError::field("account", "already taken"));
        }
        r::check_names(cfg, &r2.account, Some(&r2.domain), &[])?;
        cfg.customers.push(udn_core::config::CustomerConfig {
            name: r2.account.clone(),
            display_name: Some(r2.company.clone()),
        });
        let n = NewAddress {
            address: Some(r2.ip),
            server: None,
            site: None,
            weight: None,
        };
        super::add_pending_gtm(cfg, "domain", &r2.domain, &r2.account, &a2, &n)
    })
    .await?;
    let (u, p, acct) = (
        req.username.clone(),
        password.to_owned(),
        req.account.clone(),
    );
    let user = match st
        .db(move |b| b.accounts.create_user(&u, &p, Role::Customer, Some(&acct)))
        .await
    {
        Ok(u) => u,
        Err(e) => {
            remove_customer(st, &req.account).await;
            return Err(e.into());
        }
    };
    let account = billing_account(req, &plan);
    let made = match account {
        Ok(account) => st.db(move |b| b.billing.signup_account(&account)).await,
        Err(e) => Err(e),
    };
    if let Err(e) = made {
        let id = user.id;
        let _ = st.db(move |b| b.accounts.delete_user(id)).await;
        remove_customer(st, &req.account).await;
        return Err(e.into());
    }
    tracing::info!(
        "sign-up: account {} ({}) created, awaiting approval",
        req.account,
        req.email
    );
    Ok(())
}

fn billing_account(
    req: &SignupRequest,
    plan: &crate::api::backend::SignupPlan,
) -> Result<udn_billing::Account, ApiError> {
    use udn_billing::account::{Delivery, InvoicingInfo, PaymentMethod, Services, Subscription};
    let period: udn_billing::PeriodKind = serde_json::from_value(serde_json::json!(plan.period))
        .map_err(|e| ApiError::field("plan", e.to_string()))?;
    let account = udn_billing::Account {
        id: req.account.clone(),
        invoicing: InvoicingInfo {
            company: req.company.clone(),
            address: req.address.clone(),
            contact: req.contact.clone(),
            email: req.email.clone(),
            tax_id: req.tax_id.clone(),
        },
        currency: udn_billing::Currency::new(&plan.currency),
        delivery: if req.invoicing == "post" {
            Delivery::Post
        } else {
            Delivery::Email
        },
        // No card is captured here (no payment provider ships): a card-on-file account
        // has no card reference until the operator's provider stores one, and its
        // invoices wait for a manual payment meanwhile.
        payment: if req.invoicing == "card" {
            PaymentMethod::CardOnFile {
                card_ref: String::new(),
            }
        } else {
            PaymentMethod::Invoice { terms_days: 14 }
        },
        services: if req.service == "gtm_cdn" {
            Services::GtmCdn
        } else {
            Services::GtmOnly
        },
        billing_period: period,
        tax: None,
        subscriptions: vec![Subscription {
            plan: plan.id.clone(),
            version: plan.version,
            start: crate::logging::now(),
            end: None,
            quantity: 1,
        }],
    };
    account
        .validate()
        .map_err(|e| ApiError::field("account", e.to_string()))?;
    Ok(account)
}

/// Removes `account`'s customer entry, its hostnames and its own origin site from the
/// configuration (a failed or refused sign-up).
async fn remove_customer(st: &ApiState, account: &str) {
    let auth = author("signup".into(), Role::Admin, None);
    let acct = account.to_owned();
    let r = r::mutate(st, &auth, move |cfg| {
        cfg.customers.retain(|c| c.name != acct);
        cfg.gtm.retain(|g| g.customer != acct);
        cfg.cdn.retain(|c| c.customer != acct);
        let site = format!("{acct}-origin");
        cfg.origins.retain(|o| o.name != site);
        Ok(())
    })
    .await;
    if let Err(e) = r {
        tracing::error!("sign-up: removing customer {account}: {}", e.message());
    }
}

/// Approves or refuses `account`'s sign-up (shared by the API and the portal). A
/// refusal removes the customer, its users and its domains.
pub(crate) async fn decide(
    st: &ApiState,
    account: &str,
    approve: bool,
) -> Result<SignupStatus, ApiError> {
    let acct = account.to_owned();
    let now = st.db(move |b| b.billing.signup_status(&acct)).await?;
    if now != Some(SignupStatus::AwaitingApproval) {
        return match now {
            None => Err(ApiError::NotFound),
            Some(s) => Err(ApiError::Conflict(format!(
                "the sign-up is {} already",
                s.label()
            ))),
        };
    }
    let status = if approve {
        SignupStatus::Approved
    } else {
        let acct = account.to_owned();
        let users = st.db(|b| b.accounts.users()).await?;
        for u in users
            .into_iter()
            .filter(|u| u.customer.as_deref() == Some(acct.as_str()))
        {
            st.db(move |b| b.accounts.delete_user(u.id)).await?;
        }
        remove_customer(st, account).await;
        SignupStatus::Refused
    };
    let acct = account.to_owned();
    st.db(move |b| b.billing.signup_decide(&acct, status))
        .await?;
    tracing::info!("sign-up of {account}: {}", status.label());
    Ok(status)
}

/// `GET /signups` (admin).
pub(super) async fn signups_page(State(st): State<ApiState>, PortalUser(a): PortalUser) -> Page {
    a.require_admin()?;
    let list = st.db(|b| b.billing.signups()).await?;
    let body = html! {
        table id="signups" {
            tr { th { "Account" } th { "Company" } th { "Contact" } th { "Plan" } th { "Status" } th {} }
            @for s in &list {
                tr class="signup" data-account=(s.account.id) {
                    td { (s.account.id) }
                    td { (s.account.invoicing.company) br; @for l in &s.account.invoicing.address { (l) br; } }
                    td { (s.account.invoicing.contact) br; (s.account.invoicing.email) }
                    td { @for sub in &s.account.subscriptions { (sub.plan) " v" (sub.version) } }
                    td class="signup-status" { (s.status.label()) }
                    td { @if s.status == SignupStatus::AwaitingApproval {
                        form method="post" action=(format!("/signups/{}/approve", s.account.id)) class="inline" {
                            (csrf_input(&a)) button type="submit" class="approve" { "Approve" } }
                        form method="post" action=(format!("/signups/{}/refuse", s.account.id)) class="inline" {
                            (csrf_input(&a)) button type="submit" class="refuse" { "Refuse" } }
                    } }
                }
            }
        }
    };
    Ok(layout(&a, "/signups", "Sign-ups", false, body))
}

/// `POST /signups/{account}/{approve|refuse}` (admin).
pub(super) async fn signups_decide(
    State(st): State<ApiState>,
    PortalUser(a): PortalUser,
    Path((account, what)): Path<(String, String)>,
    Form(f): Form<FormPairs>,
) -> Page {
    check_csrf(&a, &f)?;
    a.require_admin()?;
    let approve = match what.as_str() {
        "approve" => true,
        "refuse" => false,
        _ => return Err(PortalError(ApiError::NotFound)),
    };
    decide(&st, &account, approve).await?;
    Ok(Redirect::to("/signups").into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn req() -> SignupRequest {
        SignupRequest {
            account: "acme".into(),
            company: "Acme".into(),
            address: vec!["1 Road".into()],
            contact: "Pat".into(),
            email: "pat@acme.example".into(),
            tax_id: None,
            invoicing: "email".into(),
            service: "gtm".into(),
            plan: "p".into(),
            domain: "www.acme.example".into(),
            ip: "192.0.2.1".parse().unwrap(),
            username: "pat".into(),
            expires: 10_000,
        }
    }

    #[test]
    fn links_are_signed_and_expire() {
        let key = [7u8; 32];
        let t = sign(&req(), &key);
        assert_eq!(verify(&t, &key, Timestamp::from_millis(5_000)), Ok(req()));
        assert!(
            verify(&t, &key, Timestamp::from_millis(10_001)).is_err(),
            "expired"
        );
        assert!(
            verify(&t, &[8u8; 32], Timestamp::from_millis(5_000)).is_err(),
            "other key"
        );
        // a changed request (another account) with the old signature
        let mut other = req();
        other.account = "victim".into();
        let forged = format!(
            "{}.{}",
            sign(&other, &key).split_once('.').unwrap().0,
            t.split_once('.').unwrap().1
        );
        assert!(verify(&forged, &key, Timestamp::from_millis(5_000)).is_err());
    }

    #[test]
    fn the_limiter_counts_per_address_and_stays_bounded() {
        let mut l = SignupLimiter::default();
        let a: IpAddr = "198.51.100.7".parse().unwrap();
        for _ in 0..PER_ADDRESS {
            assert!(l.allow(a));
        }
        assert!(!l.allow(a));
        assert!(l.allow("198.51.100.8".parse().unwrap()));
        for _ in 0..PER_RECIPIENT {
            assert!(l.allow_mail("Kim@Beta.example"));
        }
        assert!(
            !l.allow_mail("kim@beta.example"),
            "case does not make another address"
        );
        for i in 0..(LIMITER_ENTRIES as u32 + 10) {
            let _ = l.allow(IpAddr::from(i.to_be_bytes()));
        }
        assert!(l.seen.len() <= LIMITER_ENTRIES);
    }

    fn good_form() -> FormPairs {
        [
            ("account", "acme"),
            ("company", "Acme GmbH"),
            ("address", "Road 1\n10115 Berlin"),
            ("contact", "Pat"),
            ("email", "pat@acme.example"),
            ("invoicing", "post"),
            ("service", "gtm_cdn"),
            ("plan", "p"),
            ("domain", "WWW.Acme.Example."),
            ("ip", "192.0.2.1"),
            ("username", "pat"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn plans() -> Vec<crate::api::backend::SignupPlan> {
        vec![crate::api::backend::SignupPlan {
            id: "p".into(),
            version: 2,
            name: "P".into(),
            currency: "EUR".into(),
            period: "month".into(),
            uses_cdn: true,
        }]
    }

    #[test]
    fn the_form_is_checked_field_by_field() {
        let now = Timestamp::from_millis(1_000);
        let r = parse_form(&good_form(), &plans(), now, Duration::from_secs(60)).unwrap();
        assert_eq!(r.domain, "www.acme.example");
        assert_eq!(r.address, ["Road 1", "10115 Berlin"]);
        assert_eq!(r.expires, 61_000);
        for (field, bad) in [
            ("email", "not-an-address"),
            ("email", "a@b@c"),
            ("account", "Acme!"),
            ("account", "x"),
            ("company", "Acme\u{7}"),
            ("domain", "not a host"),
            ("domain", "-bad.example"),
            ("ip", "999.1.1.1"),
            ("plan", "gold"),
            ("invoicing", "barter"),
            ("service", "ftp"),
            ("service", "gtm"),
            ("username", "a b"),
        ] {
            let mut f = good_form();
            for kv in f.iter_mut().filter(|(k, _)| k == field) {
                kv.1 = bad.to_owned();
            }
            let errs = parse_form(&f, &plans(), now, Duration::from_secs(60)).unwrap_err();
            assert_eq!(
                errs.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(),
                [field],
                "{field} = {bad:?}"
            );
        }
        let long = "x".repeat(201);
        let mut f = good_form();
        f.retain(|(k, _)| k != "company");
        f.push(("company".into(), long));
        assert!(parse_form(&f, &plans(), now, Duration::from_secs(60)).is_err());
    }

    proptest! {
        #[test]
        fn any_form_is_answered(pairs in prop::collection::vec(("[a-z_]{1,10}", ".{0,80}"), 0..20)) {
            let f: FormPairs = pairs;
            let _ = parse_form(&f, &plans(), Timestamp::from_millis(0), Duration::from_secs(1));
        }

        #[test]
        fn verify_never_panics(s in ".{0,300}") {
            let _ = verify(&s, &[1u8; 32], Timestamp::from_millis(0));
        }
    }
}
