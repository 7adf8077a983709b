//! The billing command line, ready to be mounted under `udn control billing`:
//! `udn control billing (--db udn.sqlite | --postgres URL) [--config billing.toml] COMMAND`.
//! Every command prints JSON (or the rendered document for `show`).

use anyhow::{Context as _, Result, anyhow};
use rust_decimal::Decimal;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use udn_billing::{Account, Period, Plan, Timestamp, UsageBatch};

use super::delivery::{SmtpConfig, deliver_pending};
use super::payment::{collect_card_payments, record_manual_payment};
use super::render::{Issuer, render_html, render_pdf, render_text};
use super::run::{audit_with, logged_run};
use super::store::{BillingLocation, BillingStore};
use super::usage::usage_between;

/// `udn control billing` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct BillingArgs {
    /// The SQLite database (shared with the log store).
    #[arg(
        long,
        required_unless_present = "postgres",
        conflicts_with = "postgres"
    )]
    pub db: Option<PathBuf>,
    /// The PostgreSQL database instead (`postgres://user@host:port/db`, the one given to
    /// `udn control --postgres`).
    #[arg(long)]
    pub postgres: Option<String>,
    /// Billing configuration (TOML): `[issuer]`, optional `[smtp]`, `print_dir`.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: BillingCommand,
}

/// The billing commands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum BillingCommand {
    /// Adds a plan version from a JSON or TOML file (versions are immutable).
    PlanAdd {
        /// The plan file.
        file: PathBuf,
    },
    /// Creates or replaces an account from a JSON or TOML file.
    AccountPut {
        /// The account file.
        file: PathBuf,
    },
    /// Records a usage batch from a JSON file (idempotent by its key).
    UsageAdd {
        /// The batch file.
        file: PathBuf,
    },
    /// Issues the invoices of a period (2026-11, 2026-Q4, 2026-W48, 2026-11-26T13, 2026).
    Run {
        /// The period label.
        #[arg(long)]
        period: String,
    },
    /// E-mails (or writes printable documents for) everything not yet delivered.
    Deliver,
    /// Charges card-on-file invoices; with no provider configured, lists them.
    Collect,
    /// Lists numbered invoices and credit notes.
    List,
    /// Shows one document.
    Show {
        /// Its number, e.g. INV-000001.
        number: String,
        /// text, html, json or pdf (pdf needs --out).
        #[arg(long, default_value = "text")]
        format: String,
        /// Writes the document to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Recomputes an invoice from its stored inputs and compares.
    Audit {
        /// Its number.
        number: String,
    },
    /// Records a payment received by transfer or charged by hand.
    Pay {
        /// Invoice number.
        number: String,
        /// Amount received, e.g. 998.26.
        #[arg(long)]
        amount: Decimal,
        /// Bank or provider reference.
        #[arg(long)]
        reference: String,
    },
    /// Voids an issued, unpaid invoice.
    Void {
        /// Invoice number.
        number: String,
    },
    /// Issues a credit note cancelling an invoice.
    Credit {
        /// Invoice number.
        number: String,
    },
}

/// The billing configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BillingConfig {
    /// The seller printed on invoices.
    pub issuer: Issuer,
    /// The SMTP server; without it, e-mail deliveries wait.
    #[serde(default)]
    pub smtp: Option<SmtpConfig>,
    /// Where printable documents for post are written.
    #[serde(default = "default_print_dir")]
    pub print_dir: PathBuf,
}

fn default_print_dir() -> PathBuf {
    PathBuf::from("invoices-to-print")
}

/// Reads a JSON or TOML document (by its extension).
pub fn read_doc<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "toml") {
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    } else {
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }
}

impl BillingArgs {
    /// Where the billing tables are: `--db` or `--postgres` (clap requires exactly one).
    pub fn location(&self) -> Result<BillingLocation> {
        match (&self.db, &self.postgres) {
            (Some(db), None) => Ok(BillingLocation::Sqlite(db.clone())),
            (None, Some(url)) => Ok(BillingLocation::Postgres(url.clone())),
            _ => Err(anyhow!("give exactly one of --db FILE and --postgres URL")),
        }
    }
}

/// Runs one billing command at `now`; returns what to print. Blocks (file or network
/// I/O): call it outside async code.
pub fn execute(args: &BillingArgs, now: Timestamp) -> Result<String> {
    let mut opened = args.location()?.open()?;
    let store: &mut dyn BillingStore = &mut *opened;
    let config = args
        .config
        .as_deref()
        .map(read_doc::<BillingConfig>)
        .transpose()?;
    let need_config = || {
        config
            .as_ref()
            .ok_or_else(|| anyhow!("this command needs --config with an [issuer]"))
    };
    let json = |v: &dyn erased::Json| v.to_json();
    Ok(match &args.command {
        BillingCommand::PlanAdd { file } => {
            let plan: Plan = read_doc(file)?;
            store.put_plan(&plan)?;
            serde_json::json!({"plan": plan.id, "version": plan.version}).to_string()
        }
        BillingCommand::AccountPut { file } => {
            let account: Account = read_doc(file)?;
            store.put_account(&account)?;
            serde_json::json!({"account": account.id}).to_string()
        }
        BillingCommand::UsageAdd { file } => {
            let batch: UsageBatch = read_doc(file)?;
            let applied = store.record_usage(&batch)?;
            let applied = match applied {
                udn_billing::usage::Applied::New => "new",
                udn_billing::usage::Applied::Replay => "replay",
            };
            serde_json::json!({"key": batch.key, "applied": applied}).to_string()
        }
        BillingCommand::Run { period } => {
            let period = Period::parse(period)?;
            super::run::check_over(&period, now)?;
            let mut logs = args.location()?.open_logs()?;
            let mut read = |from| Ok(logs.file_usage_since(from)?);
            json(&logged_run(store, &mut read, &period, now, "cli", 1)?)?
        }
        BillingCommand::Deliver => {
            let c = need_config()?;
            json(&deliver_pending(
                store,
                &c.issuer,
                c.smtp.as_ref(),
                &c.print_dir,
                now,
            )?)?
        }
        BillingCommand::Collect => json(&collect_card_payments(store, None, now)?)?,
        BillingCommand::List => {
            let rows: Vec<_> = store
                .issued()?
                .into_iter()
                .map(|i| {
                    serde_json::json!({
                        "number": i.number,
                        "kind": i.kind,
                        "status": i.status,
                        "account": i.invoice.account,
                        "period": i.invoice.period.to_string(),
                        "total": i.invoice.currency.format(i.invoice.total),
                    })
                })
                .collect();
            serde_json::to_string_pretty(&rows)?
        }
        BillingCommand::Show {
            number,
            format,
            out,
        } => {
            let inv = store
                .invoice(number)?
                .ok_or_else(|| anyhow!("no invoice numbered {number}"))?;
            let doc = match format.as_str() {
                "json" => serde_json::to_string_pretty(&inv)?.into_bytes(),
                "text" => render_text(&inv, &need_config()?.issuer).into_bytes(),
                "html" => render_html(&inv, &need_config()?.issuer).into_bytes(),
                "pdf" if out.is_none() => {
                    return Err(anyhow!(
                        "a PDF is binary and is not written to the terminal: give --out FILE"
                    ));
                }
                "pdf" => render_pdf(&inv, &need_config()?.issuer),
                other => {
                    return Err(anyhow!("unknown format {other:?}: text, html, json or pdf"));
                }
            };
            match out {
                Some(path) => {
                    std::fs::write(path, &doc)
                        .with_context(|| format!("writing {}", path.display()))?;
                    format!("wrote {} ({} bytes)\n", path.display(), doc.len())
                }
                None => String::from_utf8(doc).context("the document is not text")?,
            }
        }
        BillingCommand::Audit { number } => {
            let mut logs = args.location()?.open_logs()?;
            let mut read = |c: &str, from, to| usage_between(&mut *logs, c, from, to);
            json(&audit_with(store, Some(&mut read), number)?)?
        }
        BillingCommand::Pay {
            number,
            amount,
            reference,
        } => {
            let status = record_manual_payment(store, number, *amount, reference, now)?;
            serde_json::json!({"number": number, "status": status}).to_string()
        }
        BillingCommand::Void { number } => {
            store.void(number, now)?;
            serde_json::json!({"number": number, "status": "void"}).to_string()
        }
        BillingCommand::Credit { number } => {
            let cn = store.credit(number, now)?;
            serde_json::json!({"number": number, "credit_note": cn}).to_string()
        }
    })
}

mod erased {
    /// Pretty JSON of any serializable report.
    pub trait Json {
        fn to_json(&self) -> anyhow::Result<String>;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> anyhow::Result<String> {
            Ok(serde_json::to_string_pretty(self)?)
        }
    }
}
