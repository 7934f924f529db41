//! Public TCP ports: the `expose` of a declared port as requested and checked, and the book of
//! host ports assigned from `l4.port_range`.
//!
//! A (workspace, sandbox, target) keeps its public port across re-registrations (the previous
//! record's port is reused) and across a delete and a new registration (its preferred port is a
//! hash of the triple, probed linearly, so the same triple lands on the same free port). A
//! released port is held back from every other triple for `l4.quarantine`, saved under
//! `state.dir` so a restart keeps the promise: a new owner never receives an old client's
//! connections.

use crate::{
    errors::{ApiError, ErrorCode},
    model::sandbox::{Exposure, PortProtocol, ProxyProtocol, ReleasedPort, Sandbox},
    state::port_quarantine,
};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::{collections::BTreeMap, ops::RangeInclusive, path::PathBuf, time::Duration};

/// At most this many networks in one port's `allowFrom`.
pub const MAX_ALLOW_FROM: usize = 256;

/// `expose` of a declared port, as requested.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExposeRequest {
    /// Source networks (CIDR, or an address for a /32) allowed to connect; required.
    #[serde(default)]
    pub allow_from: Vec<String>,
    /// `off` (default) or `v2`.
    #[serde(default)]
    pub proxy_protocol: ProxyProtocol,
}

fn bad_request(message: String) -> ApiError {
    ApiError::new(ErrorCode::BadRequest, message)
}

/// The checked exposure of `target` (its public port still unassigned: 0).
pub fn validate_expose(target: u16, protocol: PortProtocol, req: &ExposeRequest) -> Result<Exposure, ApiError> {
    if !matches!(protocol, PortProtocol::Tcp | PortProtocol::Tls) {
        return Err(bad_request(format!(
            "port {target}: expose is for ports declared \"TCP\" or \"TLS\"; HTTP ports are served on the HTTPS listener (/port/{target})"
        )));
    }
    if req.allow_from.is_empty() {
        return Err(bad_request(format!(
            "port {target}: expose.allowFrom is required: list the source networks allowed to connect (\"0.0.0.0/0\" for everyone)"
        )));
    }
    if req.allow_from.len() > MAX_ALLOW_FROM {
        return Err(bad_request(format!(
            "port {target}: expose.allowFrom lists {} networks; at most {MAX_ALLOW_FROM}",
            req.allow_from.len()
        )));
    }
    let mut allow_from = Vec::with_capacity(req.allow_from.len());
    for text in &req.allow_from {
        allow_from.push(parse_source(target, text)?);
    }
    allow_from.sort_unstable();
    allow_from.dedup();
    Ok(Exposure { target, public_port: 0, allow_from, proxy_protocol: req.proxy_protocol })
}

/// One `allowFrom` entry: `a.b.c.d/len` with no host bits, or an address (a /32).
fn parse_source(target: u16, text: &str) -> Result<Ipv4Net, ApiError> {
    let t = text.trim();
    let net = match t.parse::<Ipv4Net>() {
        Ok(net) => net,
        Err(_) => match t.parse::<std::net::Ipv4Addr>() {
            Ok(addr) => Ipv4Net::from(addr),
            Err(_) if t.contains(':') => {
                return Err(bad_request(format!(
                    "port {target}: expose.allowFrom {text:?}: IPv6 sources are not supported (public TCP ports are IPv4)"
                )));
            }
            Err(_) => {
                return Err(bad_request(format!(
                    "port {target}: expose.allowFrom {text:?} is not an IPv4 network (e.g. \"203.0.113.0/24\", \"198.51.100.7/32\", \"0.0.0.0/0\")"
                )));
            }
        },
    };
    if net.addr() != net.network() {
        return Err(bad_request(format!(
            "port {target}: expose.allowFrom {text:?} has host bits set: did you mean {} or {}/32?",
            net.trunc(),
            net.addr()
        )));
    }
    Ok(net)
}

/// Who holds (or last held) a public port.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Holder {
    workspace: String,
    name: String,
    target: u16,
}

impl Holder {
    fn of(sandbox: &Sandbox, target: u16) -> Self {
        Self { workspace: sandbox.workspace.clone(), name: sandbox.name.clone(), target }
    }

    /// A stable spread over the range: FNV-1a of the triple.
    fn hash(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let bytes =
            self.workspace.bytes().chain([0]).chain(self.name.bytes()).chain([0]).chain(self.target.to_be_bytes());
        for b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h
    }
}

/// The public ports of this host: who holds each, and which were released recently.
#[derive(Debug, Default)]
pub struct PortBook {
    range: Option<RangeInclusive<u16>>,
    quarantine: Duration,
    held: BTreeMap<u16, Holder>,
    released: BTreeMap<u16, (Holder, i64)>,
    /// Where the released ports are saved (`None`: not saved, in unit tests).
    file: Option<PathBuf>,
}

fn now_ms() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

impl PortBook {
    /// The book of `range` (`None`: public ports off), saved at `file`, with the public ports
    /// of this host's `sandboxes`. Ports outside the range are not served (a warning says so).
    pub fn load<'a>(
        range: Option<RangeInclusive<u16>>,
        quarantine: Duration,
        file: Option<PathBuf>,
        sandboxes: impl IntoIterator<Item = &'a Sandbox>,
    ) -> Result<Self, String> {
        let mut book = PortBook { range, quarantine, file, ..PortBook::default() };
        for s in sandboxes {
            for e in &s.exposed {
                if !book.in_range(e.public_port) {
                    tracing::warn!(
                        sandbox = %s.id(),
                        port = e.target,
                        public_port = e.public_port,
                        "the public port is outside l4.port_range and is not served; register the sandbox again to get another"
                    );
                    continue;
                }
                if let Some(other) = book.held.insert(e.public_port, Holder::of(s, e.target)) {
                    return Err(format!(
                        "public port {} is held by both {}/{} port {} and {} port {}",
                        e.public_port,
                        other.workspace,
                        other.name,
                        other.target,
                        s.id(),
                        e.target
                    ));
                }
            }
        }
        if let Some(path) = &book.file {
            let now = now_ms();
            for r in port_quarantine::load(path).map_err(|e| e.to_string())? {
                if r.until_ms > now && !book.held.contains_key(&r.public_port) {
                    let holder = Holder { workspace: r.workspace, name: r.name, target: r.target };
                    book.released.insert(r.public_port, (holder, r.until_ms));
                }
            }
        }
        Ok(book)
    }

    /// Whether public ports are on.
    pub fn enabled(&self) -> bool {
        self.range.is_some()
    }

    /// Whether `port` is one this host serves.
    pub fn in_range(&self, port: u16) -> bool {
        self.range.as_ref().is_some_and(|r| r.contains(&port))
    }

    /// Gives every exposure of `sandbox` its public port: `prev`'s for the same target if it
    /// had one, else a free one. Changes nothing in the book (see [`PortBook::commit`]).
    pub fn assign(&self, sandbox: &mut Sandbox, prev: Option<&Sandbox>) -> Result<(), ApiError> {
        if sandbox.exposed.is_empty() {
            return Ok(());
        }
        let Some(range) = self.range.clone() else {
            return Err(ApiError::new(
                ErrorCode::PublicPortsDisabled,
                "this gateway serves no public TCP ports (l4.port_range is empty): declare the port without expose and reach it with `gateway tunnel`",
            ));
        };
        let now = now_ms();
        let mut taken: Vec<u16> = Vec::new();
        for i in 0..sandbox.exposed.len() {
            let target = sandbox.exposed[i].target;
            let kept = prev.and_then(|p| p.exposure(target)).map(|e| e.public_port).filter(|p| self.in_range(*p));
            let port = match kept {
                Some(p) => p,
                None => self.free_port(&Holder::of(sandbox, target), &range, &taken, now).ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::PortRangeExhausted,
                        format!(
                            "no public port is free in l4.port_range {}-{} ({} held, {} released within l4.quarantine): widen the range or unexpose ports",
                            range.start(),
                            range.end(),
                            self.held.len(),
                            self.released.len()
                        ),
                    )
                })?,
            };
            taken.push(port);
            sandbox.exposed[i].public_port = port;
        }
        Ok(())
    }

    fn free_port(&self, holder: &Holder, range: &RangeInclusive<u16>, taken: &[u16], now: i64) -> Option<u16> {
        let (lo, len) = (u64::from(*range.start()), u64::from(*range.end()) - u64::from(*range.start()) + 1);
        let start = holder.hash() % len;
        (0..len).map(|i| u16::try_from(lo + (start + i) % len).unwrap_or(0)).find(|port| {
            let held = self.held.get(port).is_some_and(|h| h != holder);
            let quarantined = self.released.get(port).is_some_and(|(h, until)| h != holder && *until > now);
            !held && !quarantined && !taken.contains(port)
        })
    }

    /// Records that `new` (absent: deleted) replaced `old` (absent: created): its ports are
    /// held, `old`'s others released into quarantine (saved; a failed save is logged, the
    /// ports stay quarantined in memory).
    pub fn commit(&mut self, old: Option<&Sandbox>, new: Option<&Sandbox>) {
        let now = now_ms();
        let until = now.saturating_add(i64::try_from(self.quarantine.as_millis()).unwrap_or(i64::MAX));
        let mut changed = false;
        if let Some(old) = old {
            for e in &old.exposed {
                let still = new.and_then(|n| n.exposure(e.target)).is_some_and(|n| n.public_port == e.public_port);
                if !still && self.held.remove(&e.public_port).is_some() {
                    self.released.insert(e.public_port, (Holder::of(old, e.target), until));
                    changed = true;
                }
            }
        }
        if let Some(new) = new {
            let range = self.range.clone();
            let served = |e: &&Exposure| range.as_ref().is_some_and(|r| r.contains(&e.public_port));
            for e in new.exposed.iter().filter(served) {
                self.held.insert(e.public_port, Holder::of(new, e.target));
                changed |= self.released.remove(&e.public_port).is_some();
            }
        }
        self.released.retain(|_, (_, until)| *until > now);
        if changed {
            self.save();
        }
    }

    fn save(&self) {
        let Some(path) = &self.file else { return };
        let list: Vec<ReleasedPort> = self
            .released
            .iter()
            .map(|(port, (h, until))| ReleasedPort {
                public_port: *port,
                workspace: h.workspace.clone(),
                name: h.name.clone(),
                target: h.target,
                until_ms: *until,
            })
            .collect();
        if let Err(e) = port_quarantine::save(path, &list) {
            tracing::error!(path = %path.display(), error = %e, "saving the released public ports failed; they stay held back until a restart");
        }
    }

    /// Ports held and ports in quarantine.
    pub fn counts(&self) -> (usize, usize) {
        (self.held.len(), self.released.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox(name: &str, targets: &[u16]) -> Sandbox {
        Sandbox {
            workspace: "acme".into(),
            name: name.into(),
            address: "198.18.0.2".parse().expect("ip"),
            interface: "lo".into(),
            ports: Vec::new(),
            owner: None,
            exposed: targets
                .iter()
                .map(|&target| Exposure {
                    target,
                    public_port: 0,
                    allow_from: vec!["0.0.0.0/0".parse().expect("net")],
                    proxy_protocol: ProxyProtocol::Off,
                })
                .collect(),
        }
    }

    fn request(allow: &[&str]) -> ExposeRequest {
        ExposeRequest { allow_from: allow.iter().map(|s| s.to_string()).collect(), proxy_protocol: ProxyProtocol::V2 }
    }

    #[test]
    fn expose_requests_are_checked() {
        let ok = validate_expose(5432, PortProtocol::Tcp, &request(&["198.51.100.7", "203.0.113.0/24"])).expect("ok");
        assert_eq!(ok.allow_from.len(), 2);
        assert!(ok.allows("203.0.113.9".parse().expect("ip")));
        assert!(ok.allows("198.51.100.7".parse().expect("ip")));
        assert!(!ok.allows("198.51.100.8".parse().expect("ip")));
        let bad = |allow: &[&str], proto| validate_expose(5432, proto, &request(allow)).expect_err("bad").message;
        assert!(bad(&[], PortProtocol::Tcp).contains("allowFrom is required"));
        assert!(bad(&["10.0.0.0/33"], PortProtocol::Tcp).contains("\"10.0.0.0/33\""));
        assert!(bad(&["not-a-net"], PortProtocol::Tls).contains("\"not-a-net\""));
        assert!(bad(&["198.51.100.7/24"], PortProtocol::Tcp).contains("198.51.100.0/24"));
        assert!(bad(&["2001:db8::/32"], PortProtocol::Tcp).contains("IPv6"));
        assert!(bad(&["0.0.0.0/0"], PortProtocol::Http).contains("\"TCP\" or \"TLS\""));
    }

    #[test]
    fn ports_are_stable_unique_and_quarantined() {
        let mut book = PortBook::load(Some(20000..=20003), Duration::from_secs(600), None, []).expect("book");
        let mut a = sandbox("a", &[5432, 6379]);
        book.assign(&mut a, None).expect("assign");
        let (pa, pb) = (a.exposed[0].public_port, a.exposed[1].public_port);
        assert_ne!(pa, pb);
        assert!((20000..=20003).contains(&pa) && (20000..=20003).contains(&pb));
        book.commit(None, Some(&a));
        // Re-registration keeps the ports.
        let mut again = sandbox("a", &[5432, 6379]);
        book.assign(&mut again, Some(&a)).expect("again");
        assert_eq!((again.exposed[0].public_port, again.exposed[1].public_port), (pa, pb));
        // Another sandbox gets the two others, then the range is exhausted.
        let mut b = sandbox("b", &[1, 2]);
        book.assign(&mut b, None).expect("b");
        book.commit(None, Some(&b));
        let mut c = sandbox("c", &[1]);
        assert_eq!(book.assign(&mut c, None).expect_err("full").code, ErrorCode::PortRangeExhausted);
        // Deleting `a` quarantines its ports for everyone else…
        book.commit(Some(&a), None);
        assert_eq!(book.assign(&mut c, None).expect_err("quarantined").code, ErrorCode::PortRangeExhausted);
        // …but `a` registered again gets them back.
        let mut back = sandbox("a", &[6379, 5432]);
        back.exposed.sort_by_key(|e| e.target);
        book.assign(&mut back, None).expect("back");
        assert_eq!((back.exposed[0].public_port, back.exposed[1].public_port), (pa, pb));
        // With no quarantine, a released port goes to the next owner.
        let mut book = PortBook::load(Some(20000..=20000), Duration::ZERO, None, []).expect("book");
        let mut a = sandbox("a", &[1]);
        book.assign(&mut a, None).expect("a");
        book.commit(None, Some(&a));
        book.commit(Some(&a), None);
        let mut c = sandbox("c", &[1]);
        book.assign(&mut c, None).expect("free again");
        assert_eq!(c.exposed[0].public_port, 20000);
    }

    #[test]
    fn off_without_a_range() {
        let book = PortBook::load(None, Duration::ZERO, None, []).expect("book");
        let mut a = sandbox("a", &[1]);
        assert_eq!(book.assign(&mut a, None).expect_err("off").code, ErrorCode::PublicPortsDisabled);
        book.assign(&mut sandbox("b", &[]), None).expect("nothing to expose");
    }
}
