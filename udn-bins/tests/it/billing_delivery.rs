//! Invoice delivery against a real SMTP server (Python's aiosmtpd, started on loopback
//! by the test and storing what it receives in a Maildir), printable documents for
//! accounts invoiced by post, and the delivery log.

use crate::billing_common;
use crate::billing_common::on_both_stores;
use crate::smtp_support;

use billing_common::*;
use smtp_support::{SmtpServer, python_with_aiosmtpd};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use udn_billing::usage::Applied;
use udn_bins::billing::store::DeliveryStatus;
use udn_bins::billing::{
    BillingStore, deliver_pending, render_html, render_pdf, render_text, run_period,
};

/// The text of a PDF, by poppler's `pdftotext` (installed by scripts/install-deps.sh).
fn pdftotext(pdf: &[u8]) -> String {
    use std::io::Write as _;
    let mut child = Command::new("pdftotext")
        .args(["-layout", "-", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("pdftotext (poppler-utils): run scripts/install-deps.sh");
    child.stdin.take().unwrap().write_all(pdf).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "pdftotext refused the PDF");
    String::from_utf8(out.stdout).unwrap()
}

/// The one `application/pdf` attachment of a raw message (file name, bytes), taken out
/// by Python's `email` package.
fn pdf_attachment(raw: &str) -> (String, Vec<u8>) {
    use std::io::Write as _;
    const SCRIPT: &str = "import sys, email, email.policy\n\
m = email.message_from_binary_file(sys.stdin.buffer, policy=email.policy.default)\n\
parts = [p for p in m.iter_attachments() if p.get_content_type() == 'application/pdf']\n\
assert len(parts) == 1, len(parts)\n\
sys.stderr.write(parts[0].get_filename())\n\
sys.stdout.buffer.write(parts[0].get_content())\n";
    let mut child = Command::new(python_with_aiosmtpd())
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(raw.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "no single PDF attachment: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (String::from_utf8(out.stderr).unwrap(), out.stdout)
}

/// Undoes quoted-printable soft line breaks and `=3D`, enough to search the body.
fn unfold(raw: &str) -> String {
    raw.replace("=\r\n", "")
        .replace("=\n", "")
        .replace("=3D", "=")
}

fn invoices_are_emailed_or_printed_and_every_delivery_is_logged(db: &Db) {
    let mut s = store(db);
    s.put_account(&account("acme", "Acme GmbH", "email", BY_INVOICE, true))
        .unwrap();
    s.put_account(&account("beta", "Beta <AG> & Co", "post", BY_INVOICE, true))
        .unwrap();
    assert_eq!(
        s.record_usage(&cdn_usage("acme", "edge-file-1")).unwrap(),
        Applied::New
    );
    let _ = run_period(&mut s, &nov(), dec_1()).unwrap();
    let print_dir = db.dir.0.join("print");

    // first pass with the SMTP server down: the e-mail fails and is logged, the
    // printable document is written
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut down = SmtpServer::start(&db.dir.0.join("unused")).config();
    down.port = closed;
    let r = deliver_pending(&mut s, &issuer(), Some(&down), &print_dir, dec_1()).unwrap();
    assert_eq!(r.failed.len(), 1);
    assert_eq!(r.failed[0].0, "INV-000001");
    assert_eq!(r.printable.len(), 1);
    // the document to print is a PDF, read back with poppler's pdftotext
    let pdf = std::fs::read(&r.printable[0].1).unwrap();
    assert!(pdf.starts_with(b"%PDF-"), "{}", r.printable[0].1.display());
    let text = pdftotext(&pdf);
    assert!(text.contains("Beta <AG> & Co"), "{text}");
    assert!(text.contains("INV-000002"), "{text}");
    assert!(text.contains("415.31 EUR"), "{text}");
    // its HTML screen copy sits beside it, escaped
    let printed = std::fs::read_to_string(r.printable[0].1.with_extension("html")).unwrap();
    assert!(printed.contains("@media print"));
    assert!(printed.contains("Beta &lt;AG&gt; &amp; Co"));
    assert!(!printed.contains("Beta <AG>"));
    assert!(printed.contains("415.31 EUR"));
    let log = s.deliveries("INV-000002").unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].status, DeliveryStatus::Printable);
    assert_eq!(log[0].channel, "post");

    // second pass with a real SMTP server: the failed e-mail is retried and received
    let server = SmtpServer::start(&db.dir.0.join("maildir"));
    let r = deliver_pending(
        &mut s,
        &issuer(),
        Some(&server.config()),
        &print_dir,
        dec_1(),
    )
    .unwrap();
    assert_eq!(r.sent, vec!["INV-000001"]);
    assert!(
        r.printable.is_empty(),
        "the printed invoice is not printed twice"
    );
    let mail = server.received();
    assert_eq!(mail.len(), 1);
    let m = unfold(&mail[0]);
    assert!(
        m.contains("Subject: Invoice INV-000001 for 2026-11 (998.26 EUR)"),
        "{m}"
    );
    assert!(m.contains("To: billing@acme.example"));
    assert!(
        m.contains("From: \"UDN Billing\" <billing@udn.example>"),
        "{m}"
    );
    assert!(m.contains("multipart/mixed") && m.contains("multipart/alternative"));
    assert!(m.contains("text/plain") && m.contains("text/html"));
    // the PDF attachment, taken out by Python's own MIME parser, reads as the invoice
    let (name, pdf) = pdf_attachment(&mail[0]);
    assert_eq!(name, "INV-000001.pdf");
    let text = pdftotext(&pdf);
    assert!(
        text.contains("INV-000001") && text.contains("998.26 EUR"),
        "{text}"
    );
    assert!(text.contains("VAT 19%"), "{text}");
    assert!(m.contains("Traffic"));
    assert!(m.contains("467.37 EUR"));
    assert!(m.contains("VAT 19%"));
    let log = s.deliveries("INV-000001").unwrap();
    let statuses: Vec<_> = log.iter().map(|l| l.status).collect();
    assert_eq!(statuses, vec![DeliveryStatus::Failed, DeliveryStatus::Sent]);
    assert!(log[1].detail.starts_with("250"), "{}", log[1].detail);
    assert_eq!(log[1].recipient, "billing@acme.example");

    // nothing is delivered twice; a credit note is delivered like an invoice
    let r = deliver_pending(
        &mut s,
        &issuer(),
        Some(&server.config()),
        &print_dir,
        dec_1(),
    )
    .unwrap();
    assert!(r.sent.is_empty() && r.printable.is_empty() && r.failed.is_empty());
    let cn = s.credit("INV-000001", dec_1()).unwrap();
    let r = deliver_pending(
        &mut s,
        &issuer(),
        Some(&server.config()),
        &print_dir,
        dec_1(),
    )
    .unwrap();
    assert_eq!(r.sent, vec![cn.clone()]);
    let mail = server.received();
    assert_eq!(mail.len(), 2);
    assert!(mail.iter().any(|m| unfold(m).contains(&format!(
        "Subject: Credit note {cn} for 2026-11 (-998.26 EUR)"
    ))));
}

fn text_and_html_renderings_show_lines_tiers_and_totals(db: &Db) {
    let mut s = store(db);
    s.put_account(&account("acme", "Acme GmbH", "email", BY_INVOICE, true))
        .unwrap();
    assert_eq!(
        s.record_usage(&cdn_usage("acme", "edge-file-1")).unwrap(),
        Applied::New
    );
    let _ = run_period(&mut s, &nov(), dec_1()).unwrap();
    let inv = s.invoice("INV-000001").unwrap().unwrap();
    let text = render_text(&inv, &issuer());
    for want in [
        "Invoice INV-000001",
        "Acme GmbH",
        "Attn. Pat Doe",
        "Tax id DE123456789",
        "Period:  2026-11 (2026-11-01T00:00:00Z to 2026-12-01T00:00:00Z)",
        "100 GB included",
        "10000 GB at 0.04",
        "2245.678 GB at 0.03",
        "467.37 EUR",
        "Subtotal",
        "838.87 EUR",
        "159.39 EUR",
        "998.26 EUR",
        "Please pay by 2026-12-31 to IBAN",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    // the PDF carries the same text: every wanted line reads back with pdftotext
    let pdf = pdftotext(&render_pdf(&inv, &issuer()));
    for want in [
        "Invoice INV-000001",
        "Acme GmbH",
        "2245.678 GB at 0.03",
        "998.26 EUR",
    ] {
        assert!(pdf.contains(want), "missing {want:?} in the PDF:\n{pdf}");
    }
    let html = render_html(&inv, &issuer());
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("<td class=\"n\">998.26 EUR</td>"));
    assert!(html.contains("@page{size:A4"));
    // header, one row per line, subtotal and tax (the total row has a class)
    assert_eq!(html.matches("<tr>").count(), inv.invoice.lines.len() + 3);
}

fn without_smtp_emails_wait_and_nothing_is_logged_for_them(db: &Db) {
    let mut s = store(db);
    s.put_account(&account("acme", "Acme GmbH", "email", BY_INVOICE, true))
        .unwrap();
    s.put_account(&account("beta", "Beta AG", "post", BY_INVOICE, true))
        .unwrap();
    let _ = run_period(&mut s, &nov(), dec_1()).unwrap();
    let r = deliver_pending(&mut s, &issuer(), None, &db.dir.0.join("print"), dec_1()).unwrap();
    assert_eq!(r.waiting_for_smtp, vec!["INV-000001"]);
    assert_eq!(r.printable.len(), 1);
    assert!(s.deliveries("INV-000001").unwrap().is_empty());
    assert_eq!(s.deliveries("INV-000002").unwrap().len(), 1);
    // the logs are append-only
    for sql in [
        "DELETE FROM billing_deliveries",
        "UPDATE billing_deliveries SET status = 'sent'",
    ] {
        let e = db.exec(sql).expect_err(sql);
        assert!(e.contains("append-only"), "{sql}: {e}");
    }
}

on_both_stores!(
    invoices_are_emailed_or_printed_and_every_delivery_is_logged,
    text_and_html_renderings_show_lines_tiers_and_totals,
    without_smtp_emails_wait_and_nothing_is_logged_for_them,
);
