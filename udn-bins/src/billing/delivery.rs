//! Delivery of issued invoices and credit notes: by e-mail through the configured SMTP
//! server (lettre), or, for accounts invoiced by post, as a printable document (PDF, with an HTML copy)
//! written to a directory for the print room. Every attempt is logged in the store.

use anyhow::{Context as _, Result};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{Message, SmtpTransport, Transport as _};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;
use udn_billing::{Delivery, Timestamp};

use super::render::{Issuer, render_html, render_pdf, render_text};
use super::store::{BillingStore, DeliveryLog, DeliveryStatus, DocKind, Status, StoredInvoice};

/// How to reach the SMTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// Plain SMTP (loopback relays and tests only).
    None,
    /// STARTTLS on the submission port (587).
    StartTls,
    /// Implicit TLS (465).
    Tls,
}

/// The SMTP server invoices are sent through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// Host name.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Transport security.
    pub security: SmtpSecurity,
    /// User name, if the server requires authentication.
    #[serde(default)]
    pub username: Option<String>,
    /// Password, if the server requires authentication.
    #[serde(default)]
    pub password: Option<String>,
    /// Sender address, e.g. `UDN Billing <billing@udn.example>`.
    pub from: String,
    /// Timeout of each SMTP command, seconds.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
}

fn default_timeout() -> u64 {
    30
}

impl SmtpConfig {
    /// A lettre transport to this server.
    pub(crate) fn transport(&self) -> Result<SmtpTransport> {
        let builder = match self.security {
            SmtpSecurity::None => SmtpTransport::builder_dangerous(&self.host),
            SmtpSecurity::StartTls => SmtpTransport::starttls_relay(&self.host)?,
            SmtpSecurity::Tls => SmtpTransport::relay(&self.host)?,
        };
        let mut builder = builder
            .port(self.port)
            .timeout(Some(Duration::from_secs(self.timeout_secs)));
        if let (Some(u), Some(p)) = (&self.username, &self.password) {
            builder = builder.credentials(Credentials::new(u.clone(), p.clone()));
        }
        Ok(builder.build())
    }
}

/// What a delivery pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DeliveryReport {
    /// Numbers e-mailed.
    pub sent: Vec<String>,
    /// Numbers written as printable documents (path alongside).
    pub printable: Vec<(String, PathBuf)>,
    /// Numbers whose e-mail failed, with the error (retried by the next pass).
    pub failed: Vec<(String, String)>,
    /// Numbers to be e-mailed that wait because no SMTP server is configured.
    pub waiting_for_smtp: Vec<String>,
}

/// The e-mail for one document: text body with an HTML alternative.
pub fn email_message(inv: &StoredInvoice, issuer: &Issuer, from: &str) -> Result<Message> {
    let to: Mailbox = inv
        .inputs
        .account
        .invoicing
        .email
        .parse()
        .with_context(|| format!("recipient address of account {}", inv.invoice.account))?;
    let from: Mailbox = from.parse().context("sender address")?;
    let what = match inv.kind {
        DocKind::Invoice => "Invoice",
        DocKind::CreditNote => "Credit note",
    };
    let subject = format!(
        "{what} {} for {} ({})",
        inv.number.as_deref().unwrap_or(""),
        inv.invoice.period,
        inv.invoice.currency.format(inv.invoice.total)
    );
    Ok(Message::builder()
        .from(from)
        .to(to)
        .subject(subject)
        .multipart(
            MultiPart::mixed()
                .multipart(MultiPart::alternative_plain_html(
                    render_text(inv, issuer),
                    render_html(inv, issuer),
                ))
                .singlepart(
                    lettre::message::Attachment::new(pdf_name(inv))
                        .body(render_pdf(inv, issuer), pdf_type()),
                ),
        )?)
}

/// Delivers every numbered document that has not been delivered yet: e-mail for
/// accounts set to e-mail (needs `smtp`; without it they are left for a later pass),
/// a printable `NUMBER.html` in `print_dir` for accounts set to post. Each attempt is
/// logged with [`BillingStore::log_delivery`].
pub fn deliver_pending(
    store: &mut dyn BillingStore,
    issuer: &Issuer,
    smtp: Option<&SmtpConfig>,
    print_dir: &Path,
    now: Timestamp,
) -> Result<DeliveryReport> {
    let mut report = DeliveryReport::default();
    let transport = smtp.map(SmtpConfig::transport).transpose()?;
    for inv in store.issued()? {
        let Some(number) = inv.number.clone() else {
            continue;
        };
        if inv.status == Status::Void
            || store
                .deliveries(&number)?
                .iter()
                .any(|d| d.status != DeliveryStatus::Failed)
        {
            continue;
        }
        match inv.inputs.account.delivery {
            Delivery::Post => {
                std::fs::create_dir_all(print_dir)
                    .with_context(|| format!("creating {}", print_dir.display()))?;
                // The PDF is the document to print; the HTML is its screen copy.
                let html = print_dir.join(format!("{number}.html"));
                std::fs::write(&html, render_html(&inv, issuer))
                    .with_context(|| format!("writing {}", html.display()))?;
                let path = print_dir.join(pdf_name(&inv));
                std::fs::write(&path, render_pdf(&inv, issuer))
                    .with_context(|| format!("writing {}", path.display()))?;
                store.log_delivery(&DeliveryLog {
                    invoice: number.clone(),
                    channel: "post".into(),
                    recipient: path.display().to_string(),
                    status: DeliveryStatus::Printable,
                    detail: format!(
                        "to print and post to {}",
                        inv.inputs.account.invoicing.company
                    ),
                    at: now,
                })?;
                report.printable.push((number, path));
            }
            Delivery::Email => {
                let (Some(cfg), Some(t)) = (smtp, transport.as_ref()) else {
                    report.waiting_for_smtp.push(number);
                    continue;
                };
                let outcome = email_message(&inv, issuer, &cfg.from)
                    .and_then(|m| t.send(&m).map_err(anyhow::Error::from));
                let (status, detail) = match &outcome {
                    Ok(resp) => (
                        DeliveryStatus::Sent,
                        format!(
                            "{} {}",
                            resp.code(),
                            resp.message().collect::<Vec<_>>().join(" ")
                        ),
                    ),
                    Err(e) => (DeliveryStatus::Failed, format!("{e:#}")),
                };
                store.log_delivery(&DeliveryLog {
                    invoice: number.clone(),
                    channel: "email".into(),
                    recipient: inv.inputs.account.invoicing.email.clone(),
                    status,
                    detail: detail.clone(),
                    at: now,
                })?;
                match status {
                    DeliveryStatus::Sent => report.sent.push(number),
                    _ => report.failed.push((number, detail)),
                }
            }
        }
    }
    Ok(report)
}

/// The file name of an invoice's PDF: its number (`INV-000001.pdf`).
pub fn pdf_name(inv: &StoredInvoice) -> String {
    format!("{}.pdf", inv.number.as_deref().unwrap_or("draft"))
}

fn pdf_type() -> lettre::message::header::ContentType {
    lettre::message::header::ContentType::parse("application/pdf")
        .unwrap_or(lettre::message::header::ContentType::TEXT_PLAIN)
}
