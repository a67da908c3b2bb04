//! A small synchronous rtnetlink client.
//!
//! The messages are netlink-packet-route's (the crates under rtnetlink); the
//! transport is a plain blocking netlink-sys socket rather than rtnetlink's
//! tokio connection, because a socket talks to the network namespace it was
//! opened in: the pod side is configured from a short-lived thread inside
//! the pod's netns, which has no runtime to drive a connection, and a
//! request/ack on a blocking socket is all either side needs.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, LinkAttribute,
    LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// A netlink error with what was being done.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct NlError {
    pub what: String,
    #[source]
    pub source: std::io::Error,
}

impl NlError {
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
    pub fn is(&self, errno: i32) -> bool {
        self.errno() == Some(errno)
    }
}

pub type NlResult<T> = Result<T, NlError>;

fn ctx<T>(what: impl Into<String>, r: std::io::Result<T>) -> NlResult<T> {
    r.map_err(|source| NlError {
        what: what.into(),
        source,
    })
}

/// A link as seen in a dump.
#[derive(Clone, Debug)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub kind: Option<String>,
    pub master: Option<u32>,
    pub up: bool,
    pub mtu: Option<u32>,
    pub alias: Option<String>,
}

/// A route as seen in a dump of the main table.
#[derive(Clone, Debug)]
pub struct Route {
    pub dst: IpAddr,
    pub prefix: u8,
    pub oif: Option<u32>,
}

pub struct Netlink {
    sock: Socket,
    seq: u32,
}

impl Netlink {
    /// A socket of the calling thread's network namespace.
    pub fn open() -> NlResult<Self> {
        let mut sock = ctx("opening a netlink socket", Socket::new(NETLINK_ROUTE))?;
        ctx("binding the netlink socket", sock.bind_auto())?;
        ctx(
            "connecting the netlink socket",
            sock.connect(&SocketAddr::new(0, 0)),
        )?;
        // Extended acks carry the kernel's message text for EINVAL & co.
        let _ = sock.set_ext_ack(true);
        Ok(Self { sock, seq: 0 })
    }

    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16) -> std::io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.sock.send(&buf, 0)?;
        Ok(self.seq)
    }

    /// Receive until the ack (or error) of `seq`, or the end of a dump;
    /// returns the messages of a dump.
    fn receive(&mut self, seq: u32) -> std::io::Result<Vec<RouteNetlinkMessage>> {
        let mut out = Vec::new();
        loop {
            let (buf, _) = self.sock.recv_from_full()?;
            let mut offset = 0;
            while offset < buf.len() {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[offset..])
                    .map_err(|e| std::io::Error::other(format!("bad netlink reply: {e}")))?;
                let len = msg.header.length as usize;
                if len == 0 {
                    return Err(std::io::Error::other("netlink reply of length 0"));
                }
                offset += len.next_multiple_of(4);
                if msg.header.sequence_number != seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(_) => Err(e.to_io()),
                        };
                    }
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::InnerMessage(m) => out.push(m),
                    _ => {}
                }
            }
        }
    }

    /// A request answered by an ack.
    pub fn request(&mut self, what: &str, msg: RouteNetlinkMessage, flags: u16) -> NlResult<()> {
        let r = self
            .send(msg, NLM_F_REQUEST | NLM_F_ACK | flags)
            .and_then(|seq| self.receive(seq));
        ctx(what, r).map(|_| ())
    }

    fn dump(&mut self, what: &str, msg: RouteNetlinkMessage) -> NlResult<Vec<RouteNetlinkMessage>> {
        let r = self
            .send(msg, NLM_F_REQUEST | NLM_F_DUMP)
            .and_then(|seq| self.receive(seq));
        ctx(what, r)
    }

    pub fn links(&mut self) -> NlResult<Vec<Link>> {
        let msgs = self.dump(
            "listing links",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
        )?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_of(l)),
                _ => None,
            })
            .collect())
    }

    pub fn link_by_name(&mut self, name: &str) -> NlResult<Option<Link>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        let r = self
            // With an ack, so that the reply ends in a known way.
            .send(RouteNetlinkMessage::GetLink(msg), NLM_F_REQUEST | NLM_F_ACK)
            .and_then(|seq| self.receive(seq));
        match r {
            Ok(msgs) => Ok(msgs.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_of(l)),
                _ => None,
            })),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => ctx(format!("looking up link {name}"), Err(e)),
        }
    }

    /// `ip link add NAME type bridge mtu MTU`.
    pub fn add_bridge(&mut self, name: &str, mtu: u32) -> NlResult<()> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        msg.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        self.request(
            &format!("creating bridge {name}"),
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// A veth pair: `host` here, attached to `master`, and `peer` created
    /// directly in the network namespace `netns` (an nsfs fd).
    pub fn add_veth(
        &mut self,
        host: &str,
        alias: &str,
        master: u32,
        mtu: u32,
        peer: &str,
        netns: BorrowedFd<'_>,
    ) -> NlResult<()> {
        let mut peer_msg = LinkMessage::default();
        peer_msg
            .attributes
            .push(LinkAttribute::IfName(peer.to_string()));
        peer_msg.attributes.push(LinkAttribute::Mtu(mtu));
        peer_msg
            .attributes
            .push(LinkAttribute::NetNsFd(netns.as_raw_fd()));
        // Not up here: veth opens an end only once its peer exists, and
        // the peer is made first (ENOTCONN).
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(host.to_string()));
        // The alias is set by set_up: the kernel ignores IFLA_IFALIAS on creation.
        let _ = alias;
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        msg.attributes.push(LinkAttribute::Controller(master));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
        ]));
        self.request(
            &format!("creating veth {host}"),
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Bring a link up; with `hairpin`, also turn on the bridge port's
    /// hairpin mode (a pod reaches itself through its own hostPort).
    pub fn set_up(&mut self, index: u32, hairpin: bool) -> NlResult<()> {
        self.set_up_with_alias(index, hairpin, None)
    }

    /// [`Self::set_up`], also setting the link's alias.
    pub fn set_up_with_alias(
        &mut self,
        index: u32,
        hairpin: bool,
        alias: Option<&str>,
    ) -> NlResult<()> {
        self.set_up_link(index, None, hairpin, alias)
    }

    /// [`Self::set_up_with_alias`] of the link named `name` (the kernel
    /// looks it up: no request of ours for its index).
    pub fn set_up_with_alias_by_name(
        &mut self,
        name: &str,
        hairpin: bool,
        alias: Option<&str>,
    ) -> NlResult<()> {
        self.set_up_link(0, Some(name), hairpin, alias)
    }

    fn set_up_link(
        &mut self,
        index: u32,
        name: Option<&str>,
        hairpin: bool,
        alias: Option<&str>,
    ) -> NlResult<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        if let Some(n) = name {
            msg.attributes.push(LinkAttribute::IfName(n.to_string()));
        }
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        if let Some(a) = alias {
            msg.attributes.push(LinkAttribute::IfAlias(a.to_string()));
        }
        if hairpin {
            msg.attributes.push(LinkAttribute::LinkInfo(vec![
                LinkInfo::PortKind(InfoPortKind::Bridge),
                LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
                    true,
                )])),
            ]));
        }
        let what = match name {
            Some(n) => format!("setting link {n} up"),
            None => format!("setting link {index} up"),
        };
        self.request(&what, RouteNetlinkMessage::NewLink(msg), 0)
    }

    pub fn set_up_by_name(&mut self, name: &str) -> NlResult<u32> {
        let link = self.link_by_name(name)?.ok_or_else(|| NlError {
            what: format!("looking up link {name}"),
            source: std::io::Error::from_raw_os_error(libc::ENODEV),
        })?;
        self.set_up(link.index, false)?;
        Ok(link.index)
    }

    pub fn del_link(&mut self, index: u32) -> NlResult<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.request(
            &format!("deleting link {index}"),
            RouteNetlinkMessage::DelLink(msg),
            0,
        )
    }

    /// Add `addr/prefix` to a link (IPv6 without duplicate address
    /// detection: the pod must not wait a second for it). EEXIST is fine.
    pub fn add_address(&mut self, index: u32, addr: IpAddr, prefix: u8) -> NlResult<()> {
        let mut msg = AddressMessage::default();
        msg.header.index = index;
        msg.header.prefix_len = prefix;
        msg.header.family = family(addr);
        msg.attributes.push(AddressAttribute::Local(addr));
        msg.attributes.push(AddressAttribute::Address(addr));
        if addr.is_ipv6() {
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        match self.request(
            &format!("adding address {addr}/{prefix}"),
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Err(e) if e.is(libc::EEXIST) => Ok(()),
            r => r,
        }
    }

    /// Remove `addr/prefix` from a link; EADDRNOTAVAIL (not there) is fine.
    pub fn del_address(&mut self, index: u32, addr: IpAddr, prefix: u8) -> NlResult<()> {
        let mut msg = AddressMessage::default();
        msg.header.index = index;
        msg.header.prefix_len = prefix;
        msg.header.family = family(addr);
        msg.attributes.push(AddressAttribute::Local(addr));
        msg.attributes.push(AddressAttribute::Address(addr));
        match self.request(
            &format!("removing address {addr}/{prefix}"),
            RouteNetlinkMessage::DelAddress(msg),
            0,
        ) {
            Err(e) if e.is(libc::EADDRNOTAVAIL) => Ok(()),
            r => r,
        }
    }

    /// Addresses of a link.
    pub fn addresses(&mut self, index: u32) -> NlResult<Vec<(IpAddr, u8)>> {
        let msgs = self.dump(
            "listing addresses",
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
        )?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == index => {
                    a.attributes.iter().find_map(|at| match at {
                        AddressAttribute::Address(ip) => Some((*ip, a.header.prefix_len)),
                        _ => None,
                    })
                }
                _ => None,
            })
            .collect())
    }

    /// `ip route add default via GW dev INDEX`.
    pub fn add_default_route(&mut self, gw: IpAddr, index: u32) -> NlResult<()> {
        let mut msg = RouteMessage::default();
        msg.header = RouteHeader {
            address_family: family(gw),
            table: RouteHeader::RT_TABLE_MAIN,
            protocol: RouteProtocol::Boot,
            scope: RouteScope::Universe,
            kind: RouteType::Unicast,
            ..Default::default()
        };
        msg.attributes.push(RouteAttribute::Gateway(match gw {
            IpAddr::V4(a) => RouteAddress::Inet(a),
            IpAddr::V6(a) => RouteAddress::Inet6(a),
        }));
        msg.attributes.push(RouteAttribute::Oif(index));
        self.request(
            &format!("adding the default route via {gw}"),
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Routes of the main table of one family.
    pub fn routes(&mut self, v6: bool) -> NlResult<Vec<Route>> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = if v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let msgs = self.dump("listing routes", RouteNetlinkMessage::GetRoute(msg))?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r)
                    if r.header.table == RouteHeader::RT_TABLE_MAIN
                        && r.header.kind == RouteType::Unicast =>
                {
                    let dst = r.attributes.iter().find_map(|a| match a {
                        RouteAttribute::Destination(RouteAddress::Inet(a)) => Some(IpAddr::V4(*a)),
                        RouteAttribute::Destination(RouteAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
                        _ => None,
                    });
                    let oif = r.attributes.iter().find_map(|a| match a {
                        RouteAttribute::Oif(i) => Some(*i),
                        _ => None,
                    });
                    let dst = dst.unwrap_or(if v6 {
                        IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
                    } else {
                        IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
                    });
                    Some(Route {
                        dst,
                        prefix: r.header.destination_prefix_length,
                        oif,
                    })
                }
                _ => None,
            })
            .collect())
    }
}

fn family(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn link_of(l: LinkMessage) -> Link {
    let mut link = Link {
        index: l.header.index,
        name: String::new(),
        kind: None,
        master: None,
        up: l.header.flags.contains(LinkFlags::Up),
        mtu: None,
        alias: None,
    };
    for a in l.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::Controller(m) => link.master = Some(m),
            LinkAttribute::Mtu(m) => link.mtu = Some(m),
            LinkAttribute::IfAlias(s) => link.alias = Some(s),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        link.kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    link
}
