//! Invoices as plain text (e-mail body) and HTML (portal, e-mail alternative, and the
//! printable document for accounts invoiced by post: an A4 print stylesheet).

use crate::period::{format_date, format_utc};
use crate::{Currency, LineItem};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

use crate::lifecycle::{DocKind, StoredInvoice};

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
        crate::PaymentMethod::Invoice { .. } => format!(
            "Please pay by {due}{}.",
            issuer
                .bank
                .as_ref()
                .map(|b| format!(" to {b}, quoting {}", inv.number.as_deref().unwrap_or("")))
                .unwrap_or_default()
        ),
        crate::PaymentMethod::CardOnFile { .. } => {
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
    if let Some(at) = inv.due_at {
        let _ = write!(s, " &middot; due {}", format_date(at));
    }
    let _ = write!(
        s,
        " &middot; status <strong class=\"status\">{}</strong>",
        inv.status.as_str()
    );
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

/// Points per millimetre.
const PT_PER_MM: f32 = 72.0 / 25.4;
/// A4 in points.
const A4: (f32, f32) = (210.0 * PT_PER_MM, 297.0 * PT_PER_MM);
/// Body text: Courier at this size keeps the text rendering's columns.
const PDF_BODY_PT: f32 = 9.0;
const PDF_LEADING: f32 = 12.0;
const PDF_MARGIN: f32 = 20.0 * PT_PER_MM;
/// Characters per line at [`PDF_BODY_PT`] within the margins (Courier is 0.6 em wide).
const PDF_COLUMNS: usize = ((A4.0 - 2.0 * PDF_MARGIN) / (PDF_BODY_PT * 0.6)) as usize;

/// The invoice as a PDF document (A4; the issuer, the recipient, every line, the totals
/// and the payment note, as in [`render_text`]), for accounts invoiced by post and as the
/// e-mail's attachment. Only the PDF base fonts (Courier, Helvetica-Bold) are used, so
/// nothing is embedded; text is WinAnsi-encoded (`€` included), and a character
/// outside it prints as `?`. Long lines are wrapped, and pages added as needed.
pub fn render_pdf(inv: &StoredInvoice, issuer: &Issuer) -> Vec<u8> {
    use pdf_writer::{Content, Finish, Name, Pdf, Rect, Ref, Str, TextStr};
    let title = title(inv);
    let text = render_text(inv, issuer);
    let pages = pdf_pages(&text);
    let mut pdf = Pdf::new();
    let catalog = Ref::new(1);
    let tree = Ref::new(2);
    let body_font = Ref::new(3);
    let title_font = Ref::new(4);
    let info = Ref::new(5);
    let page_ref = |i: usize| Ref::new(10 + 2 * i as i32);
    let content_ref = |i: usize| Ref::new(11 + 2 * i as i32);
    pdf.catalog(catalog).pages(tree);
    pdf.pages(tree)
        .kids((0..pages.len()).map(page_ref))
        .count(pages.len() as i32);
    pdf.document_info(info)
        .title(TextStr(&title))
        .author(TextStr(&issuer.name));
    for (font, base) in [(body_font, "Courier"), (title_font, "Helvetica-Bold")] {
        pdf.type1_font(font)
            .base_font(Name(base.as_bytes()))
            .encoding_predefined(Name(b"WinAnsiEncoding"));
    }
    let n = pages.len();
    for (i, page_lines) in pages.iter().enumerate() {
        let mut page = pdf.page(page_ref(i));
        page.media_box(Rect::new(0.0, 0.0, A4.0, A4.1));
        page.parent(tree);
        page.contents(content_ref(i));
        page.resources()
            .fonts()
            .pair(Name(b"F1"), body_font)
            .pair(Name(b"F2"), title_font);
        page.finish();

        let mut c = Content::new();
        let top = A4.1 - PDF_MARGIN;
        c.begin_text();
        c.set_font(Name(b"F2"), 14.0);
        c.next_line(PDF_MARGIN, top);
        let head = if n > 1 {
            format!("{title} (page {} of {n})", i + 1)
        } else {
            title.clone()
        };
        c.show(Str(&win_ansi(&head)));
        c.end_text();
        c.begin_text();
        c.set_font(Name(b"F1"), PDF_BODY_PT);
        c.set_leading(PDF_LEADING);
        c.next_line(PDF_MARGIN, top - 2.0 * PDF_LEADING);
        for l in page_lines.iter() {
            c.show(Str(&win_ansi(l)));
            c.next_line_using_leading();
        }
        c.end_text();
        pdf.stream(content_ref(i), &c.finish());
    }
    pdf.finish()
}

/// The body lines of [`render_text`]'s output laid out for the PDF: its title and
/// underline dropped (the title is drawn large), lines longer than the page wrapped, and
/// split into pages. Always at least one page.
fn pdf_pages(text: &str) -> Vec<Vec<String>> {
    let mut lines: Vec<String> = Vec::new();
    for l in text.lines().skip(2) {
        let chars: Vec<char> = l.chars().collect();
        if chars.is_empty() {
            lines.push(String::new());
        }
        for chunk in chars.chunks(PDF_COLUMNS.max(1)) {
            lines.push(chunk.iter().collect());
        }
    }
    let usable = A4.1 - 2.0 * PDF_MARGIN - 2.0 * PDF_LEADING;
    let per_page = ((usable / PDF_LEADING) as usize).max(1);
    let mut pages: Vec<Vec<String>> = lines.chunks(per_page).map(<[String]>::to_vec).collect();
    if pages.is_empty() {
        pages.push(Vec::new());
    }
    pages
}

/// `s` in the PDF WinAnsiEncoding (Windows-1252): ASCII and Latin-1 as themselves, the
/// euro sign and the typographic marks at their 0x80-0x9F places, anything else `?`.
fn win_ansi(s: &str) -> Vec<u8> {
    s.chars()
        .map(|ch| match ch {
            '\u{20}'..='\u{7e}' | '\u{a0}'..='\u{ff}' => ch as u8,
            '€' => 0x80,
            '‚' => 0x82,
            '„' => 0x84,
            '…' => 0x85,
            '‘' => 0x91,
            '’' => 0x92,
            '“' => 0x93,
            '”' => 0x94,
            '–' => 0x96,
            '—' => 0x97,
            _ => b'?',
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pdf_pages_wrap_long_lines_and_paginate() {
        let long = "x".repeat(PDF_COLUMNS * 2 + 3);
        let mut text = String::from("Title\n=====\n");
        text.push_str(&long);
        text.push('\n');
        for i in 0..200 {
            text.push_str(&format!("line {i}\n"));
        }
        let pages = pdf_pages(&text);
        let all: Vec<&String> = pages.iter().flatten().collect();
        assert_eq!(all.len(), 3 + 200, "the long line becomes three");
        assert!(all.iter().all(|l| l.chars().count() <= PDF_COLUMNS));
        assert_eq!(all[0].len() + all[1].len() + all[2].len(), long.len());
        assert!(pages.len() >= 3, "{} pages", pages.len());
        assert!(!all.iter().any(|l| l.as_str() == "Title"));
        assert_eq!(all.last().unwrap().as_str(), "line 199");
        assert_eq!(pdf_pages("").len(), 1);
    }

    #[test]
    fn win_ansi_maps_the_euro_and_replaces_what_it_cannot_show() {
        assert_eq!(win_ansi("5 € – Müller"), b"5 \x80 \x96 M\xfcller");
        assert_eq!(win_ansi("東京\u{7}"), b"???");
    }
}
