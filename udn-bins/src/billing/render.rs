//! Invoices as plain text (e-mail body) and HTML (portal, e-mail alternative, and the
//! printable document for accounts invoiced by post: an A4 print stylesheet).

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use udn_billing::period::{format_date, format_utc};
use udn_billing::{Currency, LineItem};

use super::store::{DocKind, StoredInvoice};

/// The seller printed on every invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Issuer {
    /// Legal name.
    pub name: String,
    /// Postal address lines.
    pub address: Vec<String>,
    /// Contact e-mail (also the sender of invoice e-mails).
    pub email: String,
    /// VAT or other tax id.
    #[serde(default)]
    pub tax_id: Option<String>,
    /// Bank details for transfers, printed on invoices paid by transfer.
    #[serde(default)]
    pub bank: Option<String>,
}

fn title(inv: &StoredInvoice) -> String {
    let what = match inv.kind {
        DocKind::Invoice => "Invoice",
        DocKind::CreditNote => "Credit note",
    };
    format!("{what} {}", inv.number.as_deref().unwrap_or("(draft)"))
}

fn money(c: &Currency, d: Decimal) -> String {
    c.format(d)
}

fn qty(d: Decimal) -> String {
    d.round_dp(6).normalize().to_string()
}

fn detail(l: &LineItem, c: &Currency) -> Vec<String> {
    let mut out = Vec::new();
    if !l.allowance.is_zero() {
        out.push(format!("{} {} included", qty(l.allowance), l.unit));
    }
    if l.tiers.len() > 1 || (l.tiers.len() == 1 && l.unit_price.is_none()) {
        for t in &l.tiers {
            let to =
                t.to.map_or("and above".to_owned(), |t| format!("to {}", qty(t)));
            out.push(format!(
                "{} {} at {} (tier from {} {to}) = {}",
                qty(t.quantity),
                l.unit,
                t.unit_price.normalize(),
                qty(t.from),
                t.amount.round_dp(6).normalize(),
            ));
        }
    }
    if let Some(p) = l.proration {
        out.push(format!(
            "prorated {}% of the period, {} to {}",
            (p * Decimal::from(100)).round_dp(4).normalize(),
            format_utc(l.from),
            format_utc(l.to)
        ));
    }
    let _ = c;
    out
}

/// Plain text, for the e-mail body.
pub fn render_text(inv: &StoredInvoice, issuer: &Issuer) -> String {
    let i = &inv.invoice;
    let a = &inv.inputs.account;
    let c = &i.currency;
    let mut s = String::new();
    let _ = writeln!(s, "{}", title(inv));
    let _ = writeln!(s, "{}", "=".repeat(title(inv).len()));
    let _ = writeln!(s);
    let _ = writeln!(s, "From: {}", issuer.name);
    for l in &issuer.address {
        let _ = writeln!(s, "      {l}");
    }
    if let Some(t) = &issuer.tax_id {
        let _ = writeln!(s, "      Tax id {t}");
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "To:   {}", a.invoicing.company);
    let _ = writeln!(s, "      Attn. {}", a.invoicing.contact);
    for l in &a.invoicing.address {
        let _ = writeln!(s, "      {l}");
    }
    if let Some(t) = &a.invoicing.tax_id {
        let _ = writeln!(s, "      Tax id {t}");
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "Account: {}", a.id);
    let _ = writeln!(
        s,
        "Period:  {} ({} to {})",
        i.period,
        format_utc(i.period.start),
        format_utc(i.period.end)
    );
    if let Some(at) = inv.issued_at {
        let _ = writeln!(s, "Issued:  {}", format_date(at));
    }
    if let Some(c) = &inv.credits {
        let _ = writeln!(s, "Credits: invoice {c}");
    }
    let _ = writeln!(s);
    for l in &i.lines {
        let price = l
            .unit_price
            .map(|p| format!(" x {}", p.normalize()))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "{:<56} {:>16}",
            format!("{} ({} {}{price})", l.description, qty(l.quantity), l.unit),
            money(c, l.amount)
        );
        for d in detail(l, c) {
            let _ = writeln!(s, "    {d}");
        }
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "{:<56} {:>16}", "Subtotal", money(c, i.subtotal));
    if let Some(t) = &i.tax {
        let _ = writeln!(s, "{:<56} {:>16}", t.name, money(c, t.amount));
    }
    let _ = writeln!(s, "{:<56} {:>16}", "Total", money(c, i.total));
    let _ = writeln!(s);
    let _ = writeln!(s, "{}", payment_note(inv, issuer));
    s
}

fn payment_note(inv: &StoredInvoice, issuer: &Issuer) -> String {
    if inv.kind == DocKind::CreditNote {
        return "This credit note cancels the invoice named above.".to_owned();
    }
    let due = inv.due_at.map(format_date).unwrap_or_default();
    match &inv.inputs.account.payment {
        udn_billing::PaymentMethod::Invoice { .. } => format!(
            "Please pay by {due}{}.",
            issuer
                .bank
                .as_ref()
                .map(|b| format!(" to {b}, quoting {}", inv.number.as_deref().unwrap_or("")))
                .unwrap_or_default()
        ),
        udn_billing::PaymentMethod::CardOnFile { .. } => {
            "This amount is charged to the card on file.".to_owned()
        }
    }
}

/// Escapes text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:52em;margin:2em auto;color:#111}\
table{border-collapse:collapse;width:100%}th,td{padding:.3em .5em;border-bottom:1px solid #ddd;vertical-align:top}\
td.n,th.n{text-align:right;white-space:nowrap}.detail{color:#555;font-size:.9em}\
.parties{display:flex;justify-content:space-between;gap:2em}.total td{font-weight:bold;border-top:2px solid #111}\
@media print{@page{size:A4;margin:20mm}body{margin:0;max-width:none;font-size:10pt}a{color:inherit;text-decoration:none}\
.no-print{display:none}tr{page-break-inside:avoid}}";

/// HTML: a complete document with a print stylesheet (A4, no screen-only parts), used
/// in the portal, as the e-mail's HTML alternative, and as the printable document for
/// accounts invoiced by post.
pub fn render_html(inv: &StoredInvoice, issuer: &Issuer) -> String {
    let i = &inv.invoice;
    let a = &inv.inputs.account;
    let c = &i.currency;
    let e = escape;
    let mut s = String::new();
    let t = e(&title(inv));
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title><style>{STYLE}</style></head><body>\n<h1>{t}</h1>\n<div class=\"parties\"><div><strong>{}</strong><br>",
        e(&issuer.name)
    );
    for l in &issuer.address {
        let _ = write!(s, "{}<br>", e(l));
    }
    if let Some(t) = &issuer.tax_id {
        let _ = write!(s, "Tax id {}<br>", e(t));
    }
    let _ = write!(
        s,
        "{}</div><div><strong>{}</strong><br>Attn. {}<br>",
        e(&issuer.email),
        e(&a.invoicing.company),
        e(&a.invoicing.contact)
    );
    for l in &a.invoicing.address {
        let _ = write!(s, "{}<br>", e(l));
    }
    if let Some(t) = &a.invoicing.tax_id {
        let _ = write!(s, "Tax id {}<br>", e(t));
    }
    let _ = write!(
        s,
        "</div></div>\n<p>Account <code>{}</code> &middot; period <strong>{}</strong> ({} to {})",
        e(&a.id),
        i.period,
        format_utc(i.period.start),
        format_utc(i.period.end)
    );
    if let Some(at) = inv.issued_at {
        let _ = write!(s, " &middot; issued {}", format_date(at));
    }
    if let Some(cr) = &inv.credits {
        let _ = write!(s, " &middot; credits invoice {}", e(cr));
    }
    let _ = write!(
        s,
        "</p>\n<table><thead><tr><th>Description</th><th class=\"n\">Quantity</th><th>Unit</th><th class=\"n\">Unit price</th><th class=\"n\">Amount</th></tr></thead><tbody>\n"
    );
    for l in &i.lines {
        let _ = write!(s, "<tr><td>{}", e(&l.description));
        for d in detail(l, c) {
            let _ = write!(s, "<div class=\"detail\">{}</div>", e(&d));
        }
        let _ = writeln!(
            s,
            "</td><td class=\"n\">{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            qty(l.quantity),
            e(&l.unit),
            l.unit_price
                .map(|p| p.normalize().to_string())
                .unwrap_or_default(),
            e(&money(c, l.amount))
        );
    }
    let _ = write!(
        s,
        "</tbody><tfoot><tr><td colspan=\"4\">Subtotal</td><td class=\"n\">{}</td></tr>",
        e(&money(c, i.subtotal))
    );
    if let Some(tx) = &i.tax {
        let _ = write!(
            s,
            "<tr><td colspan=\"4\">{}</td><td class=\"n\">{}</td></tr>",
            e(&tx.name),
            e(&money(c, tx.amount))
        );
    }
    let _ = write!(
        s,
        "<tr class=\"total\"><td colspan=\"4\">Total</td><td class=\"n\">{}</td></tr></tfoot></table>\n<p>{}</p>\n</body></html>\n",
        e(&money(c, i.total)),
        e(&payment_note(inv, issuer))
    );
    s
}
