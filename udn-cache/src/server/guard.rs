//! Origin fetches reach only permitted addresses: a resolver that drops every address
//! the [`TargetPolicy`] refuses, after resolution and just before the connection, so a
//! name that resolves (or is rebound) into the provider's network is never connected
//! to. Literal-address origin URLs are checked by the edge before it sends.

use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use udn_core::netpolicy::{Denied, TargetPolicy};

/// The response header naming why an origin was not fetched (`loopback`, `private`...).
pub(super) const REFUSED_HEADER: &str = "x-udn-origin-refused";

/// The edge's current policy, replaced when the router is.
#[derive(Clone)]
pub(super) struct SharedPolicy(Arc<RwLock<Arc<TargetPolicy>>>);

impl SharedPolicy {
    pub(super) fn new(p: Arc<TargetPolicy>) -> Self {
        SharedPolicy(Arc::new(RwLock::new(p)))
    }
    pub(super) fn get(&self) -> Arc<TargetPolicy> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
    pub(super) fn set(&self, p: Arc<TargetPolicy>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = p;
    }
}

/// Why a name was not connected to: every address it resolved to is refused.
#[derive(Debug, Clone)]
pub(super) struct Refusal {
    pub(super) name: String,
    pub(super) addr: std::net::IpAddr,
    pub(super) range: Denied,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} resolves to {} ({}), not a permitted target",
            self.name, self.addr, self.range
        )
    }
}

impl std::error::Error for Refusal {}

/// The system resolver, filtered through the policy.
#[derive(Clone)]
pub(super) struct GuardedResolver {
    inner: GaiResolver,
    policy: SharedPolicy,
}

impl GuardedResolver {
    pub(super) fn new(policy: SharedPolicy) -> Self {
        GuardedResolver {
            inner: GaiResolver::new(),
            policy,
        }
    }
}

type Resolving =
    Pin<Box<dyn Future<Output = Result<std::vec::IntoIter<SocketAddr>, std::io::Error>> + Send>>;

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Resolving;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = self.policy.get();
        let host = name.as_str().to_string();
        let lookup = self.inner.call(name);
        Box::pin(async move {
            let mut first_refused = None;
            let allowed: Vec<SocketAddr> = lookup
                .await?
                .filter(|a| match policy.check(a.ip()) {
                    Ok(()) => true,
                    Err(range) => {
                        first_refused.get_or_insert((a.ip(), range));
                        false
                    }
                })
                .collect();
            match (allowed.is_empty(), first_refused) {
                (true, Some((addr, range))) => Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    Refusal {
                        name: host,
                        addr,
                        range,
                    },
                )),
                _ => Ok(allowed.into_iter()),
            }
        })
    }
}

/// The [`Refusal`] somewhere in an error's source chain.
pub(super) fn refusal_in(e: &(dyn std::error::Error + 'static)) -> Option<Refusal> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<Refusal>() {
            return Some(r.clone());
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(r) = inner.downcast_ref::<Refusal>()
        {
            return Some(r.clone());
        }
        cur = err.source();
    }
    None
}
