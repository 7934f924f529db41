//! The host's IPv4 addresses in `GW_HOST_ADDRS`, which `sandbox_out` keeps sandboxes off.
//!
//! Filled from an rtnetlink dump when the data plane opens, then kept current by a thread
//! reading `RTM_NEWADDR`/`RTM_DELADDR` events. The event socket subscribes before the dump, so
//! a change racing the start-up is applied after it (events are idempotent). If events were
//! lost (`ENOBUFS`: the socket's buffer overflowed), the map is rebuilt from a new dump.
//!
//! Each address counts once per (interface, prefix) holding it: the same host-side address is
//! commonly put on every sandbox's interface, and deleting one interface must not unprotect it
//! on the others. An interface's broadcast address is a host address too (the host delivers
//! directed broadcasts to its wildcard sockets).

use std::{
    collections::{HashMap, HashSet},
    io,
    net::{IpAddr, Ipv4Addr},
    os::fd::AsFd,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use gateway_common::{names, policy::HostAddr};
use netlink_packet_core::{NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use super::{DataplaneError, kernel};

/// How often the event thread wakes up to check whether it should stop.
const STOP_POLL: Duration = Duration::from_millis(200);
/// Receive buffer of the event socket: room for a burst of events (thousands of sandbox
/// interfaces created at once) before the kernel reports `ENOBUFS`.
const EVENT_BUFFER: usize = 4 << 20;

/// Keeps `GW_HOST_ADDRS` current until dropped.
pub struct HostAddrWatcher {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for HostAddrWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Fills `GW_HOST_ADDRS` (pinned in `maps_dir`) with the host's addresses now, and starts the
/// thread that follows their changes.
pub fn watch(maps_dir: &Path) -> Result<HostAddrWatcher, DataplaneError> {
    let path = maps_dir.join(names::MAP_HOST_ADDRS);
    let data = MapData::from_pin(&path).map_err(kernel(format!("opening pinned map {}", path.display())))?;
    let map = BpfHashMap::try_from(Map::HashMap(data)).map_err(kernel("map GW_HOST_ADDRS has an unexpected type"))?;
    let events = event_socket().map_err(kernel("subscribing to the host's address changes (rtnetlink)"))?;
    let mut tracker = Tracker { held: HashMap::new(), map };
    tracker.resync().map_err(|e| DataplaneError::Kernel {
        context: "reading the host's addresses into GW_HOST_ADDRS".into(),
        source: anyhow::Error::new(e),
    })?;
    let stop = Arc::new(AtomicBool::new(false));
    let thread = std::thread::Builder::new()
        .name("gw-hostaddrs".into())
        .spawn({
            let stop = stop.clone();
            move || follow(events, tracker, &stop)
        })
        .map_err(kernel("starting the host address thread"))?;
    Ok(HostAddrWatcher { stop, thread: Some(thread) })
}

/// A socket receiving the IPv4 address events, with a receive timeout (so the thread can stop).
fn event_socket() -> io::Result<Socket> {
    let mut s = Socket::new(NETLINK_ROUTE)?;
    s.bind(&SocketAddr::new(0, libc::RTMGRP_IPV4_IFADDR as u32))?;
    s.set_rx_buf_sz(EVENT_BUFFER)?;
    let timeout = nix::sys::time::TimeVal::new(0, STOP_POLL.as_micros() as i64);
    nix::sys::socket::setsockopt(&s.as_fd(), nix::sys::socket::sockopt::ReceiveTimeout, &timeout)?;
    Ok(s)
}

fn follow(events: Socket, mut tracker: Tracker, stop: &AtomicBool) {
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        let n = match events.recv(&mut &mut buf[..], 0) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => continue,
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                tracing::warn!("host address events were lost; reading every address again");
                if let Err(e) = tracker.resync() {
                    tracing::error!(error = %e, "cannot read the host's addresses; GW_HOST_ADDRS may be stale");
                }
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "host address events failed; GW_HOST_ADDRS may be stale");
                std::thread::sleep(STOP_POLL);
                continue;
            }
        };
        for msg in messages(&buf[..n.min(buf.len())]) {
            match msg {
                RouteNetlinkMessage::NewAddress(a) => tracker.add(&a),
                RouteNetlinkMessage::DelAddress(a) => tracker.remove(&a),
                _ => {}
            }
        }
    }
}

/// The route messages of one datagram (errors and control messages skipped).
fn messages(mut buf: &[u8]) -> Vec<RouteNetlinkMessage> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(buf) else { break };
        let len = (msg.header.length as usize).next_multiple_of(4);
        if len == 0 {
            break;
        }
        if let NetlinkPayload::InnerMessage(m) = msg.payload {
            out.push(m);
        }
        buf = buf.get(len..).unwrap_or_default();
    }
    out
}

/// The host addresses an address message is about: the interface's own address (`IFA_LOCAL`,
/// or `IFA_ADDRESS` when there is no local one) and its broadcast address.
fn addresses(msg: &AddressMessage) -> Vec<Ipv4Addr> {
    if msg.header.family != AddressFamily::Inet {
        return Vec::new();
    }
    let v4 = |ip: &IpAddr| match ip {
        IpAddr::V4(a) => Some(*a),
        IpAddr::V6(_) => None,
    };
    let local = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => v4(ip),
        _ => None,
    });
    let address = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(ip) => v4(ip),
        _ => None,
    });
    let broadcast = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Broadcast(b) => Some(*b),
        _ => None,
    });
    local.or(address).into_iter().chain(broadcast).collect()
}

/// One interface's claim on an address: (ifindex, prefix length, is a broadcast address).
type Holder = (u32, u8, bool);

/// The host's addresses and who holds them, mirrored into `GW_HOST_ADDRS`.
struct Tracker {
    held: HashMap<Ipv4Addr, HashSet<Holder>>,
    map: BpfHashMap<MapData, HostAddr, u32>,
}

impl Tracker {
    fn holders(msg: &AddressMessage) -> Vec<(Ipv4Addr, Holder)> {
        let (index, prefix) = (msg.header.index, msg.header.prefix_len);
        addresses(msg).into_iter().enumerate().map(|(i, a)| (a, (index, prefix, i > 0))).collect()
    }

    fn add(&mut self, msg: &AddressMessage) {
        for (addr, holder) in Self::holders(msg) {
            self.held.entry(addr).or_default().insert(holder);
            if let Err(e) = self.map.insert(HostAddr { addr: addr.octets() }, 1, 0) {
                tracing::error!(%addr, error = %e, "cannot add a host address to GW_HOST_ADDRS");
            }
        }
    }

    fn remove(&mut self, msg: &AddressMessage) {
        for (addr, holder) in Self::holders(msg) {
            let Some(h) = self.held.get_mut(&addr) else { continue };
            h.remove(&holder);
            if h.is_empty() {
                self.held.remove(&addr);
                let _ = self.map.remove(&HostAddr { addr: addr.octets() });
            }
        }
    }

    /// Rebuilds everything from a dump: new addresses first, then stale ones out.
    fn resync(&mut self) -> io::Result<()> {
        let dump = dump_addresses()?;
        self.held.clear();
        for msg in &dump {
            self.add(msg);
        }
        let stale: Vec<HostAddr> = self
            .map
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !self.held.contains_key(&Ipv4Addr::from(k.addr)))
            .collect();
        for k in stale {
            let _ = self.map.remove(&k);
        }
        tracing::debug!(addresses = self.held.len(), "host addresses loaded into GW_HOST_ADDRS");
        Ok(())
    }
}

/// Every IPv4 address of the host (`RTM_GETADDR` dump), retried when the kernel reports that
/// the dump was interrupted by a change.
fn dump_addresses() -> io::Result<Vec<AddressMessage>> {
    for _ in 0..5 {
        if let Some(all) = try_dump()? {
            return Ok(all);
        }
    }
    Err(io::Error::other("the address dump kept being interrupted by changes"))
}

fn try_dump() -> io::Result<Option<Vec<AddressMessage>>> {
    let mut s = Socket::new(NETLINK_ROUTE)?;
    s.bind_auto()?;
    s.connect(&SocketAddr::new(0, 0))?;
    let mut request = AddressMessage::default();
    request.header.family = AddressFamily::Inet;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = 1;
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::from(RouteNetlinkMessage::GetAddress(request)));
    msg.finalize();
    let mut out = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut out);
    s.send(&out, 0)?;
    let mut all = Vec::new();
    let mut interrupted = false;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = s.recv(&mut &mut buf[..], 0)?;
        let mut rest = &buf[..n.min(buf.len())];
        while !rest.is_empty() {
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest)
                .map_err(|e| io::Error::other(format!("malformed rtnetlink message: {e}")))?;
            let len = (msg.header.length as usize).next_multiple_of(4);
            interrupted |= msg.header.flags & NLM_F_DUMP_INTR != 0;
            match msg.payload {
                NetlinkPayload::Done(_) => return Ok((!interrupted).then_some(all)),
                NetlinkPayload::Error(e) => {
                    return Err(e.code.map_or_else(
                        || io::Error::other("rtnetlink error"),
                        |c| io::Error::from_raw_os_error(-c.get()),
                    ));
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(a)) => all.push(a),
                _ => {}
            }
            if len == 0 {
                break;
            }
            rest = rest.get(len..).unwrap_or_default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(index: u32, prefix: u8, attrs: Vec<AddressAttribute>) -> AddressMessage {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.index = index;
        m.header.prefix_len = prefix;
        m.attributes = attrs;
        m
    }

    #[test]
    fn an_address_message_names_the_local_and_broadcast_addresses() {
        let a: Ipv4Addr = "198.18.0.1".parse().expect("ip");
        let b: Ipv4Addr = "198.18.0.3".parse().expect("ip");
        let peer: Ipv4Addr = "198.18.9.9".parse().expect("ip");
        let m = msg(
            3,
            30,
            vec![
                AddressAttribute::Address(peer.into()),
                AddressAttribute::Local(a.into()),
                AddressAttribute::Broadcast(b),
            ],
        );
        assert_eq!(addresses(&m), vec![a, b], "IFA_ADDRESS is the peer when IFA_LOCAL is there");
        assert_eq!(addresses(&msg(3, 32, vec![AddressAttribute::Address(a.into())])), vec![a]);
        let mut v6 = msg(3, 64, vec![AddressAttribute::Address("fe80::1".parse().expect("ip"))]);
        v6.header.family = AddressFamily::Inet6;
        assert!(addresses(&v6).is_empty());
    }
}
