//! Turning where a service's replicas are said to be (`CHATAI_<PART>_ADDRS`:
//! `host:port` entries, each an IP address or a name that may resolve to
//! several) into socket addresses: the [`Resolver`] trait, the DNS one
//! processes use ([`DnsResolver`], tokio's `lookup_host`: the system
//! resolver, so `/etc/hosts` and a container network's DNS both work), and a
//! [`FakeResolver`] tests move replicas in and out of.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use crate::config::ServiceAddr;

/// Finds the socket addresses one `host:port` entry stands for now.
#[async_trait::async_trait]
pub trait Resolver: Send + Sync + std::fmt::Debug + 'static {
    /// Every address `target` resolves to (an IP address resolves to
    /// itself). An error leaves the caller with what it knew before.
    async fn resolve(&self, target: &ServiceAddr) -> std::io::Result<Vec<SocketAddr>>;
}

/// The system resolver, asked again at every resolution (it honours the
/// answers' lifetimes no better than the system does: re-resolving every few
/// seconds is what keeps up with replicas coming and going).
#[derive(Debug, Clone, Copy, Default)]
pub struct DnsResolver;

#[async_trait::async_trait]
impl Resolver for DnsResolver {
    async fn resolve(&self, target: &ServiceAddr) -> std::io::Result<Vec<SocketAddr>> {
        if let Some(addr) = target.socket_addr() {
            return Ok(vec![addr]);
        }
        let mut found: Vec<SocketAddr> = tokio::net::lookup_host(target.as_str()).await?.collect();
        found.sort();
        found.dedup();
        Ok(found)
    }
}

/// A resolver for tests: each name resolves to what the test last set (an
/// unknown name fails as DNS would; an IP address resolves to itself).
#[derive(Debug, Clone, Default)]
pub struct FakeResolver {
    names: Arc<Mutex<HashMap<String, std::io::Result<Vec<SocketAddr>>>>>,
}

impl FakeResolver {
    pub fn new() -> Self {
        Self::default()
    }

    /// `target` (as written in the list, `host:port`) now resolves to `addrs`.
    pub fn set(&self, target: &str, addrs: impl IntoIterator<Item = SocketAddr>) {
        self.names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(target.to_owned(), Ok(addrs.into_iter().collect()));
    }

    /// Resolving `target` now fails (a DNS outage).
    pub fn fail(&self, target: &str) {
        self.names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(
                target.to_owned(),
                Err(std::io::Error::other("the fake DNS is down")),
            );
    }
}

#[async_trait::async_trait]
impl Resolver for FakeResolver {
    async fn resolve(&self, target: &ServiceAddr) -> std::io::Result<Vec<SocketAddr>> {
        let names = self
            .names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match names.get(target.as_str()) {
            Some(Ok(addrs)) => Ok(addrs.clone()),
            Some(Err(err)) => Err(std::io::Error::new(err.kind(), err.to_string())),
            None => match target.socket_addr() {
                Some(addr) => Ok(vec![addr]),
                None => Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{target} is not known to the fake DNS"),
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IP address is itself; a name is what DNS says (`localhost` is
    /// in every /etc/hosts).
    #[tokio::test]
    async fn dns_resolves_addresses_and_names() {
        let ip: ServiceAddr = "127.0.0.1:7".parse().expect("an address");
        assert_eq!(
            DnsResolver.resolve(&ip).await.expect("resolves"),
            vec![SocketAddr::from(([127, 0, 0, 1], 7))]
        );
        let name: ServiceAddr = "localhost:7".parse().expect("an address");
        let found = DnsResolver.resolve(&name).await.expect("resolves");
        assert!(!found.is_empty() && found.iter().all(|a| a.ip().is_loopback() && a.port() == 7));
    }

    /// The fake answers what it was told, fails when told to, and leaves IP
    /// addresses alone.
    #[tokio::test]
    async fn the_fake_answers_what_it_was_told() {
        let fake = FakeResolver::new();
        let name: ServiceAddr = "chat:1".parse().expect("an address");
        assert!(fake.resolve(&name).await.is_err());
        let a = SocketAddr::from(([10, 0, 0, 1], 1));
        fake.set("chat:1", [a]);
        assert_eq!(fake.resolve(&name).await.expect("set"), vec![a]);
        fake.fail("chat:1");
        assert!(fake.resolve(&name).await.is_err());
        let ip: ServiceAddr = "127.0.0.1:9".parse().expect("an address");
        assert_eq!(fake.resolve(&ip).await.expect("itself").len(), 1);
    }
}
