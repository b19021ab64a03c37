//! Connection limits at the edge: how many sockets this gateway holds, per
//! client address and in all, so that no client — idle, slow or many — can
//! use up its file descriptors ([`Limits`]).
//!
//! Two kinds of socket are counted:
//! - **unfinished**: accepted, but not (yet) a WebSocket — an HTTP request
//!   being read or answered (health, metrics), an upgrade in progress, a
//!   refused client being closed. Capped per client address (a socket over
//!   the cap is closed at once) and in all (a new one closes the *oldest*
//!   unfinished one, so health checks always get in). The time one may stay
//!   unfinished is bounded by the header-read timeout and the upgrade
//!   deadline (`accept.rs`, `http.rs`).
//! - **connections**: WebSockets past the upgrade. Capped in all (the node
//!   cap, below the descriptor limit) and, optionally, per client address;
//!   a client over either is upgraded and closed 1013 `Try again later`.
//!
//! Unset caps are derived from the process's descriptor limit
//! (`RLIMIT_NOFILE`), keeping descriptors back for the process's own files
//! and outgoing connections and for unfinished sockets: see [`Budget`].
//!
//! The client address is the TCP peer's, or — when the peer is a trusted
//! proxy (`CHATAI_TRUSTED_PROXIES`) — the one its `X-Forwarded-For` names.
//! State is one small map behind a `std` mutex, never held across an
//! `.await`; guards give their counts back when dropped.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::HeaderMap;
use ipnet::IpNet;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;

use crate::config::GatewayConfig;

/// The close code and reason of a client refused for capacity (the node
/// cap or the per-address cap): try again later, perhaps on another node.
pub const TRY_AGAIN_LATER: (u16, &str) = (1013, "Try again later");

/// The close frame of [`TRY_AGAIN_LATER`].
pub fn try_again_later() -> CloseFrame {
    CloseFrame {
        code: CloseCode::from(TRY_AGAIN_LATER.0),
        reason: TRY_AGAIN_LATER.1.into(),
    }
}

/// The proxies whose `X-Forwarded-For` is believed: addresses and CIDRs,
/// comma-separated (`10.0.0.7, 10.0.0.0/8, fd00::/8`); empty entries (and
/// an empty setting) are none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(pub Vec<IpNet>);

impl FromStr for TrustedProxies {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("{entry:?} is neither an IP address nor a CIDR"))
            })
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }
}

impl TrustedProxies {
    pub fn contains(&self, addr: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&addr))
    }
}

/// How many sockets of each kind this gateway holds, derived from the
/// descriptor limit when not configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// WebSocket connections (the node cap).
    pub connections: usize,
    /// Unfinished sockets in all.
    pub unfinished: usize,
    /// Descriptors left for the process itself (listeners, gRPC channels,
    /// files, log output); informational.
    pub process: usize,
}

impl Budget {
    /// With a descriptor limit of `nofile`: a sixteenth of it (at least 32,
    /// at most 256) is kept for the process, as much (at least 16, at most
    /// 256) for unfinished sockets, and the rest is for connections (896 of
    /// 1024, 19 488 of 20 000). `connections` and `unfinished` override the
    /// derived values.
    pub fn derive(nofile: u64, connections: Option<usize>, unfinished: Option<usize>) -> Budget {
        let nofile = usize::try_from(nofile.min(1 << 24)).unwrap_or(1 << 24);
        let process = (nofile / 16).clamp(32, 256);
        let unfinished = unfinished.unwrap_or((nofile / 16).clamp(16, 256)).max(1);
        let connections = connections
            .unwrap_or_else(|| nofile.saturating_sub(process + unfinished))
            .max(1);
        Budget {
            connections,
            unfinished,
            process,
        }
    }

    /// The soft descriptor limit of this process (1024 when unreadable).
    pub fn nofile() -> u64 {
        rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
    }
}

/// Why a socket or a WebSocket was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The client address holds its share of unfinished sockets.
    #[error("too many unfinished connections from this address")]
    UnfinishedPerAddress,
    /// The node holds as many WebSockets as it may.
    #[error("the gateway is full")]
    NodeFull,
    /// The client address holds its share of WebSockets.
    #[error("too many connections from this address")]
    ConnectionsPerAddress,
}

/// The counts of one client address.
#[derive(Debug, Default)]
struct PerAddress {
    unfinished: usize,
    connections: usize,
}

/// An unfinished socket, by accept order.
#[derive(Debug)]
struct Pending {
    addr: IpAddr,
    /// Counted against `addr`'s unfinished cap (not for trusted proxies).
    per_address: bool,
    cut: CancellationToken,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    /// Every unfinished socket, oldest first.
    unfinished: BTreeMap<u64, Pending>,
    connections: usize,
    per_address: HashMap<IpAddr, PerAddress>,
}

impl State {
    fn forget_unfinished(&mut self, id: u64) {
        if let Some(pending) = self.unfinished.remove(&id)
            && pending.per_address
        {
            self.release(pending.addr, |counts| &mut counts.unfinished);
        }
    }

    fn release(&mut self, addr: IpAddr, count: impl Fn(&mut PerAddress) -> &mut usize) {
        if let Some(counts) = self.per_address.get_mut(&addr) {
            let value = count(counts);
            *value = value.saturating_sub(1);
            if counts.unfinished == 0 && counts.connections == 0 {
                self.per_address.remove(&addr);
            }
        }
    }
}

/// The gateway's socket limits and counts (see the module docs).
#[derive(Debug)]
pub struct Limits {
    /// The whole request head must arrive within this.
    pub header_read_timeout: Duration,
    /// An upgrade (the 101 written; a refused client's close) must finish within this.
    pub upgrade_timeout: Duration,
    budget: Budget,
    /// 0: no cap.
    max_unfinished_per_ip: usize,
    /// 0: no cap.
    max_connections_per_ip: usize,
    trusted_proxies: TrustedProxies,
    state: Mutex<State>,
}

impl Limits {
    /// From the configuration, with caps left unset derived from `nofile`.
    pub fn new(config: &GatewayConfig, nofile: u64) -> Limits {
        let budget = Budget::derive(nofile, config.max_connections, config.max_unfinished);
        Limits {
            header_read_timeout: Duration::from_secs(config.header_read_timeout_secs.max(1)),
            upgrade_timeout: Duration::from_secs(config.upgrade_timeout_secs.max(1)),
            budget,
            max_unfinished_per_ip: config.max_unfinished_per_ip,
            max_connections_per_ip: config.max_connections_per_ip,
            trusted_proxies: config.trusted_proxies.clone(),
            state: Mutex::new(State::default()),
        }
    }

    pub fn budget(&self) -> Budget {
        self.budget
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state stays consistent at every unlock (no code in between
        // panics), so a poisoned lock is still good to use.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn is_trusted(&self, addr: IpAddr) -> bool {
        self.trusted_proxies.contains(addr)
    }

    /// A socket from `peer` was accepted: counts it as unfinished, or
    /// refuses it (the caller closes it at once). At the node's unfinished
    /// cap, the oldest unfinished socket is cut to make room.
    pub fn accept(self: &Arc<Self>, peer: IpAddr) -> Result<Handshake, Refused> {
        let addr = peer.to_canonical();
        let per_address = !self.is_trusted(addr) && self.max_unfinished_per_ip > 0;
        let mut state = self.state();
        if per_address
            && state
                .per_address
                .get(&addr)
                .is_some_and(|counts| counts.unfinished >= self.max_unfinished_per_ip)
        {
            return Err(Refused::UnfinishedPerAddress);
        }
        while state.unfinished.len() >= self.budget.unfinished {
            let Some((&oldest, _)) = state.unfinished.first_key_value() else {
                break;
            };
            if let Some(pending) = state.unfinished.get(&oldest) {
                pending.cut.cancel();
            }
            state.forget_unfinished(oldest);
        }
        let id = state.next_id;
        state.next_id += 1;
        let cut = CancellationToken::new();
        state.unfinished.insert(
            id,
            Pending {
                addr,
                per_address,
                cut: cut.clone(),
            },
        );
        if per_address {
            state.per_address.entry(addr).or_default().unfinished += 1;
        }
        Ok(Handshake {
            limits: self.clone(),
            id,
            cut,
        })
    }

    /// Cuts the oldest unfinished socket, if any (the accept loop does this
    /// when the process is out of descriptors).
    pub fn cut_oldest(&self) {
        let mut state = self.state();
        if let Some((&oldest, pending)) = state.unfinished.first_key_value() {
            pending.cut.cancel();
            state.forget_unfinished(oldest);
        }
    }

    /// How many sockets are unfinished now.
    pub fn unfinished(&self) -> usize {
        self.state().unfinished.len()
    }

    /// A WebSocket for a client at `client`: counts it, or refuses it for
    /// capacity (upgraded and closed with [`try_again_later`]).
    pub fn admit(self: &Arc<Self>, client: IpAddr) -> Result<Admitted, Refused> {
        let client = client.to_canonical();
        let mut state = self.state();
        if state.connections >= self.budget.connections {
            return Err(Refused::NodeFull);
        }
        let per_address = self.max_connections_per_ip > 0;
        if per_address
            && state
                .per_address
                .get(&client)
                .is_some_and(|counts| counts.connections >= self.max_connections_per_ip)
        {
            return Err(Refused::ConnectionsPerAddress);
        }
        state.connections += 1;
        if per_address {
            state.per_address.entry(client).or_default().connections += 1;
        }
        Ok(Admitted {
            limits: self.clone(),
            client: per_address.then_some(client),
        })
    }

    /// The client's address: `peer`, or, when `peer` is a trusted proxy,
    /// the address its `X-Forwarded-For` names — the last hop that is not
    /// itself a trusted proxy, read from the right (where each proxy
    /// appends), so an address a client wrote in the header is never
    /// believed. An unreadable hop ends the walk at the last readable one.
    pub fn client_addr(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = peer.to_canonical();
        if !self.is_trusted(client) {
            return client;
        }
        let values: Vec<_> = headers.get_all("x-forwarded-for").iter().collect();
        for value in values.into_iter().rev() {
            let Ok(text) = value.to_str() else {
                return client;
            };
            for hop in text.rsplit(',') {
                let Some(addr) = parse_hop(hop) else {
                    return client;
                };
                client = addr;
                if !self.is_trusted(addr) {
                    return client;
                }
            }
        }
        client
    }
}

/// One `X-Forwarded-For` entry: an address, or an address with a port.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    hop.parse::<IpAddr>()
        .or_else(|_| hop.parse::<SocketAddr>().map(|addr| addr.ip()))
        .ok()
        .map(|addr| addr.to_canonical())
}

/// An unfinished socket's place in the counts; given back when the last
/// holder drops it (the connection task, and a request's upgrade task).
#[derive(Debug)]
pub struct Handshake {
    limits: Arc<Limits>,
    id: u64,
    cut: CancellationToken,
}

impl Handshake {
    /// Cancelled when this socket is cut to make room for a newer one.
    pub fn cut(&self) -> &CancellationToken {
        &self.cut
    }

    /// The socket is no longer unfinished though it stays an HTTP
    /// connection (it carries an admitted SSE stream, counted as a
    /// connection): it leaves the unfinished counts and is never cut to
    /// make room.
    pub fn finish(&self) {
        self.limits.state().forget_unfinished(self.id);
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        self.limits.state().forget_unfinished(self.id);
    }
}

/// A WebSocket's place in the counts, held by its connection task.
#[derive(Debug)]
pub struct Admitted {
    limits: Arc<Limits>,
    /// The address counted against, when the per-address cap is on.
    client: Option<IpAddr>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut state = self.limits.state();
        state.connections = state.connections.saturating_sub(1);
        if let Some(client) = self.client {
            state.release(client, |counts| &mut counts.connections);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(edit: impl FnOnce(&mut GatewayConfig)) -> Arc<Limits> {
        let mut config = GatewayConfig::default();
        edit(&mut config);
        Arc::new(Limits::new(&config, 1024))
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append("x-forwarded-for", value.parse().expect("a header value"));
        }
        headers
    }

    /// The defaults keep descriptors back for the process and for
    /// unfinished sockets; configured values win.
    #[test]
    fn the_budget_stays_below_the_descriptor_limit() {
        let small = Budget::derive(256, None, None);
        assert_eq!(
            (small.connections, small.unfinished, small.process),
            (208, 16, 32)
        );
        let usual = Budget::derive(1024, None, None);
        assert_eq!((usual.connections, usual.unfinished), (896, 64));
        let bench = Budget::derive(20_000, None, None);
        assert_eq!(bench.connections, 19_488);
        let large = Budget::derive(1 << 20, None, None);
        assert_eq!(
            large.connections + large.unfinished + large.process,
            1 << 20
        );
        assert_eq!(large.unfinished, 256);
        let set = Budget::derive(256, Some(10), Some(5));
        assert_eq!((set.connections, set.unfinished), (10, 5));
        assert!(Budget::derive(8, None, None).connections >= 1);
    }

    /// Over the per-address cap, a socket is refused; other addresses are
    /// not affected, and a closed socket gives its place back.
    #[test]
    fn unfinished_sockets_are_capped_per_address() {
        let limits = limits(|c| c.max_unfinished_per_ip = 2);
        let first = limits.accept(ip("127.0.0.2")).expect("the first");
        let _second = limits.accept(ip("127.0.0.2")).expect("the second");
        assert_eq!(
            limits.accept(ip("127.0.0.2")).err(),
            Some(Refused::UnfinishedPerAddress)
        );
        let _other = limits.accept(ip("127.0.0.3")).expect("another address");
        drop(first);
        let _third = limits
            .accept(ip("127.0.0.2"))
            .expect("a place was given back");
    }

    /// At the node's unfinished cap, a new socket cuts the oldest.
    #[test]
    fn the_oldest_unfinished_socket_makes_room() {
        let limits = limits(|c| {
            c.max_unfinished = Some(2);
            c.max_unfinished_per_ip = 0;
        });
        let oldest = limits.accept(ip("127.0.0.2")).expect("one");
        let middle = limits.accept(ip("127.0.0.3")).expect("two");
        let _newest = limits.accept(ip("127.0.0.4")).expect("three");
        assert!(oldest.cut().is_cancelled());
        assert!(!middle.cut().is_cancelled());
        assert_eq!(limits.unfinished(), 2);
        drop(oldest);
        assert_eq!(limits.unfinished(), 2, "a cut socket was already forgotten");
    }

    /// The node cap and the optional per-address cap on WebSockets.
    #[test]
    fn connections_are_capped_per_node_and_per_address() {
        let limits = limits(|c| {
            c.max_connections = Some(3);
            c.max_connections_per_ip = 2;
        });
        let a = limits.admit(ip("10.0.0.1")).expect("one");
        let _b = limits.admit(ip("10.0.0.1")).expect("two");
        assert_eq!(
            limits.admit(ip("10.0.0.1")).err(),
            Some(Refused::ConnectionsPerAddress)
        );
        let _c = limits.admit(ip("10.0.0.2")).expect("three");
        assert_eq!(limits.admit(ip("10.0.0.3")).err(), Some(Refused::NodeFull));
        drop(a);
        let _d = limits
            .admit(ip("10.0.0.1"))
            .expect("a place was given back");
    }

    /// `X-Forwarded-For` counts only from a trusted proxy, read from the
    /// right past other trusted proxies; what a client wrote further left
    /// is not believed.
    #[test]
    fn forwarded_for_is_believed_from_trusted_proxies_only() {
        let limits = limits(|c| {
            c.trusted_proxies = "10.0.0.0/8, 192.0.2.7".parse().expect("a list");
        });
        let untrusted = ip("203.0.113.9");
        assert_eq!(
            limits.client_addr(untrusted, &forwarded(&["198.51.100.1"])),
            untrusted
        );
        let proxy = ip("192.0.2.7");
        assert_eq!(
            limits.client_addr(proxy, &forwarded(&["198.51.100.1"])),
            ip("198.51.100.1")
        );
        assert_eq!(
            limits.client_addr(proxy, &forwarded(&["1.2.3.4, 198.51.100.1, 10.1.1.1"])),
            ip("198.51.100.1")
        );
        assert_eq!(
            limits.client_addr(proxy, &forwarded(&["1.2.3.4", "198.51.100.1:4711"])),
            ip("198.51.100.1")
        );
        assert_eq!(
            limits.client_addr(proxy, &forwarded(&["198.51.100.1, garbage"])),
            proxy
        );
        assert_eq!(limits.client_addr(proxy, &HeaderMap::new()), proxy);
        assert_eq!(
            limits.client_addr(ip("::ffff:192.0.2.7"), &forwarded(&["198.51.100.1"])),
            ip("198.51.100.1")
        );
    }

    /// The setting's format; empty is none.
    #[test]
    fn trusted_proxies_read_addresses_and_cidrs() {
        let proxies: TrustedProxies = " 10.0.0.0/8,192.0.2.7,, fd00::/8 ".parse().expect("a list");
        assert_eq!(proxies.0.len(), 3);
        assert!(proxies.contains(ip("10.1.2.3")));
        assert!(proxies.contains(ip("192.0.2.7")));
        assert!(!proxies.contains(ip("192.0.2.8")));
        assert!(proxies.contains(ip("fd00::1")));
        assert_eq!("".parse::<TrustedProxies>(), Ok(TrustedProxies::default()));
        assert!("10.0.0.0/8, proxy.local".parse::<TrustedProxies>().is_err());
    }

    /// Trusted proxies carry many clients: they are exempt from the
    /// per-address unfinished cap.
    #[test]
    fn trusted_proxies_are_not_capped_as_one_address() {
        let limits = limits(|c| {
            c.max_unfinished_per_ip = 1;
            c.trusted_proxies = "127.0.0.4".parse().expect("a list");
        });
        let _one = limits.accept(ip("127.0.0.4")).expect("one");
        let _two = limits.accept(ip("127.0.0.4")).expect("two");
    }
}
