//! The page check: download a URL and every component its HTML references, with
//! bounded parallelism, optionally twice (the second pass with warm DNS), and report
//! one row per component.

use super::fetch::{FetchRequest, Resolver, fetch};
use crate::html::components;
use crate::pagecheck::{Overall, PageError, PageReport, Row};
use crate::service::Phases;
use crate::url::HttpUrl;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How to run a page check.
#[derive(Debug, Clone)]
pub struct PageCheckOptions {
    /// Components fetched at once.
    pub parallel: usize,
    /// Time limit per component.
    pub timeout: Duration,
    /// Components fetched at most (the page excluded).
    pub max_components: usize,
    /// Fixed name resolutions (`host` -> address), like curl's `--resolve`.
    pub resolve: Vec<(String, std::net::IpAddr)>,
    /// Ask this DNS server for the other names instead of the system resolver (the
    /// lookup is timed as the row's DRT).
    pub dns: Option<super::fetch::DnsServer>,
    /// Which addresses the page and its components may be fetched from (checked after
    /// resolution); `None`: any.
    pub policy: Option<Arc<udn_core::netpolicy::TargetPolicy>>,
    /// Hosts components may be fetched from besides the page's own (case-insensitive);
    /// a component elsewhere is not fetched and its row says refused. `None`: any host.
    pub component_hosts: Option<Vec<String>>,
}

impl Default for PageCheckOptions {
    fn default() -> Self {
        PageCheckOptions {
            parallel: 4,
            timeout: Duration::from_secs(10),
            max_components: 200,
            resolve: Vec::new(),
            dns: None,
            policy: None,
            component_hosts: None,
        }
    }
}

/// Runs a page check; with `repeat`, runs it a second time with the names resolved by
/// the first pass cached (warm DNS) and returns both reports, the warm one last.
pub async fn page_check(url: &str, repeat: bool, opts: &PageCheckOptions) -> Vec<PageReport> {
    let mut resolver = Resolver::system().with_cache();
    if let Some(dns) = &opts.dns {
        resolver = resolver.with_dns_server(dns.clone());
    }
    for (h, ip) in &opts.resolve {
        resolver = resolver.with_override(h, *ip);
    }
    let mut out = vec![one_pass(url, 1, opts, &resolver).await];
    if repeat {
        out.push(one_pass(url, 2, opts, &resolver).await);
    }
    out
}

fn row_of(
    url: &str,
    page_start: Instant,
    r: Result<super::fetch::Fetched, super::fetch::FetchFailure>,
) -> (Row, Vec<u8>) {
    match r {
        Ok(f) => {
            let row = Row::new(
                url,
                f.ip,
                None,
                Some(f.status),
                &f.body,
                f.started.saturating_duration_since(page_start),
                f.phases,
            );
            (
                Row {
                    len: f.body_len,
                    ..row
                },
                f.body,
            )
        }
        Err(e) => (
            Row::new(
                url,
                e.ip,
                Some(e.error),
                None,
                b"",
                e.started.saturating_duration_since(page_start),
                e.phases,
            ),
            Vec::new(),
        ),
    }
}

/// Whether a component on `host` may be fetched: the page's host, or any listed one
/// (every host when there is no list).
fn host_allowed(host: &str, page_host: &str, hosts: Option<&[String]>) -> bool {
    let host = host.trim_end_matches('.');
    match hosts {
        None => true,
        Some(list) => {
            host.eq_ignore_ascii_case(page_host)
                || list
                    .iter()
                    .any(|h| h.trim_end_matches('.').eq_ignore_ascii_case(host))
        }
    }
}

async fn one_pass(url: &str, pass: u8, opts: &PageCheckOptions, resolver: &Resolver) -> PageReport {
    let page_start = Instant::now();
    let parsed = match HttpUrl::parse(url) {
        Ok(u) => u,
        Err(e) => {
            let row = Row::new(
                url,
                None,
                Some(PageError::BadUrl(e.to_string())),
                None,
                b"",
                Duration::ZERO,
                Phases::default(),
            );
            let rows = vec![row];
            return PageReport {
                overall: Overall::from_rows(url, pass, &rows),
                rows,
            };
        }
    };
    let page_host = parsed.host.to_ascii_lowercase();
    let mut req = FetchRequest::get(parsed);
    req.timeout = opts.timeout;
    req.policy = opts.policy.clone();
    let (page_row, body) = row_of(url, page_start, fetch(&req, resolver).await);
    let html = String::from_utf8_lossy(&body);
    let comps: Vec<String> = if page_row.err == 0 {
        components(url, &html)
            .into_iter()
            .take(opts.max_components)
            .map(|c| c.url)
            .collect()
    } else {
        Vec::new()
    };
    let sem = Arc::new(tokio::sync::Semaphore::new(opts.parallel.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, c) in comps.iter().enumerate() {
        let sem = sem.clone();
        let resolver = resolver.clone();
        let c = c.clone();
        let timeout = opts.timeout;
        let policy = opts.policy.clone();
        let hosts = opts.component_hosts.clone();
        let page_host = page_host.clone();
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await;
            let row = match HttpUrl::parse(&c) {
                Ok(u) if !host_allowed(&u.host, &page_host, hosts.as_deref()) => Row::new(
                    &c,
                    None,
                    Some(PageError::Refused(format!(
                        "{} is not the page's host nor one of the customer's hostnames \
                         (list it in allow_hosts)",
                        u.host
                    ))),
                    None,
                    b"",
                    page_start.elapsed(),
                    Phases::default(),
                ),
                Ok(u) => {
                    let mut req = FetchRequest::get(u);
                    req.timeout = timeout;
                    req.policy = policy;
                    row_of(&c, page_start, fetch(&req, &resolver).await).0
                }
                Err(e) => Row::new(
                    &c,
                    None,
                    Some(PageError::BadUrl(e.to_string())),
                    None,
                    b"",
                    page_start.elapsed(),
                    Phases::default(),
                ),
            };
            (i, row)
        });
    }
    let mut rows: Vec<Option<Row>> = vec![None; comps.len()];
    while let Some(res) = tasks.join_next().await {
        if let Ok((i, row)) = res
            && let Some(slot) = rows.get_mut(i)
        {
            *slot = Some(row);
        }
    }
    let mut all = vec![page_row];
    all.extend(rows.into_iter().flatten());
    PageReport {
        overall: Overall::from_rows(url, pass, &all),
        rows: all,
    }
}
