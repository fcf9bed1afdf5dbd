//! A small synchronous rtnetlink client: the links, addresses and routes a container network needs.
//!
//! Synchronous on purpose: it runs in the monitor, which must stay single-threaded (libcontainer forks),
//! so `rtnetlink`'s tokio runtime is out. The message types come from `netlink-packet-route`, the same
//! crate libcontainer uses.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::RawFd;

use netlink_packet_core::{
    ErrorBuffer, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, Parseable,
    NLMSG_DONE, NLMSG_ERROR, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkHeader, LinkInfo, LinkMessage,
    LinkMessageBuffer,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::NetError;

/// `RTM_NEWLINK`: a link's description, as the reply to `RTM_GETLINK`.
const RTM_NEWLINK: u16 = 16;

/// A netlink socket bound in the network namespace it was created in.
pub struct Netlink {
    socket: Socket,
    sequence: u32,
}

/// Runs `away`, which moves the calling thread into another network namespace, and brings the
/// thread back to the one it was in, whatever `away` returned.
fn and_back_home<T>(away: impl FnOnce() -> Result<T, NetError>) -> Result<T, NetError> {
    let home = std::fs::File::open("/proc/thread-self/ns/net").map_err(|e| err("own netns", e))?;
    let result = away();
    // SAFETY: `home` is an open network-namespace file. Returning must not fail silently, or the
    // thread would work in the other namespace from now on.
    if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&home), libc::CLONE_NEWNET) } != 0 {
        return Err(err("leave netns", std::io::Error::last_os_error()));
    }
    result
}

fn err(what: &str, e: impl std::fmt::Display) -> NetError {
    NetError::Netlink(format!("{what}: {e}"))
}

impl Netlink {
    /// A socket in the calling thread's current network namespace.
    pub fn new() -> Result<Self, NetError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(|e| err("socket", e))?;
        socket.bind_auto().map_err(|e| err("bind", e))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| err("connect", e))?;
        Ok(Self {
            socket,
            sequence: 0,
        })
    }

    /// A socket inside the network namespace `netns` (an open `/proc/<pid>/ns/net`): the thread enters
    /// it, opens the socket (which stays bound there) and comes back.
    pub fn in_namespace(netns: RawFd) -> Result<Self, NetError> {
        and_back_home(|| {
            // SAFETY: `netns` is an open network-namespace file for the duration of this call.
            if unsafe { libc::setns(netns, libc::CLONE_NEWNET) } != 0 {
                return Err(err("enter netns", std::io::Error::last_os_error()));
            }
            Self::new()
        })
    }

    /// A new, empty network namespace, as an open file: the calling thread creates it, opens it and
    /// returns to its own. It lives as long as the file or a process in it does.
    pub fn new_namespace() -> Result<std::fs::File, NetError> {
        and_back_home(|| {
            // SAFETY: unshare only moves this thread into a new network namespace; nothing of ours
            // is touched.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(err("new netns", std::io::Error::last_os_error()));
            }
            std::fs::File::open("/proc/thread-self/ns/net").map_err(|e| err("new netns", e))
        })
    }

    /// Sends one request and collects the replies until the ACK (or DONE); kernel errors come back as
    /// `NetError::Netlink` with errno, `EEXIST` as [`NetError::Exists`].
    fn request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, NetError> {
        let mut replies = Vec::new();
        self.exchange(message, flags, |reply| {
            let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(reply.into_inner())
                .map_err(|e| err("decode", e))?;
            if let NetlinkPayload::InnerMessage(m) = reply.payload {
                replies.push(m);
            }
            Ok(())
        })?;
        Ok(replies)
    }

    /// Sends one request and hands each reply that is not the ACK, DONE or an error to `each`,
    /// undecoded: callers that need a message's header only skip parsing its attributes (parsing a
    /// bridge's link info formats its every attribute into error contexts, eagerly: 0.3 ms a link).
    fn exchange(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
        mut each: impl FnMut(NetlinkBuffer<&[u8]>) -> Result<(), NetError>,
    ) -> Result<(), NetError> {
        self.sequence += 1;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = self.sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0).map_err(|e| err("send", e))?;
        loop {
            let (data, _) = self
                .socket
                .recv_from_full()
                .map_err(|e| err("receive", e))?;
            let mut offset = 0;
            while offset < data.len() {
                let reply =
                    NetlinkBuffer::new_checked(&data[offset..]).map_err(|e| err("decode", e))?;
                let length = reply.length() as usize;
                if length == 0 || offset + length > data.len() {
                    return Err(err("decode", "bad message length"));
                }
                offset += length;
                if reply.sequence_number() != self.sequence {
                    continue;
                }
                match reply.message_type() {
                    NLMSG_ERROR => {
                        let error = ErrorBuffer::new_checked(reply.payload())
                            .map_err(|e| err("decode", e))?;
                        let Some(code) = error.code() else {
                            return Ok(());
                        };
                        let errno = -code.get();
                        if errno == libc::EEXIST {
                            return Err(NetError::Exists);
                        }
                        return Err(NetError::Netlink(format!(
                            "{}",
                            std::io::Error::from_raw_os_error(errno)
                        )));
                    }
                    NLMSG_DONE => return Ok(()),
                    _ => {
                        let whole = NetlinkBuffer::new_checked(&data[offset - length..offset])
                            .map_err(|e| err("decode", e))?;
                        each(whole)?;
                    }
                }
            }
        }
    }

    /// The index of the link named `name`, if there is one.
    pub fn link_index(&mut self, name: &str) -> Result<Option<u32>, NetError> {
        let mut message = LinkMessage::default();
        message
            .attributes
            .push(LinkAttribute::IfName(name.to_string()));
        let mut index = None;
        let asked = self.exchange(RouteNetlinkMessage::GetLink(message), 0, |reply| {
            if reply.message_type() == RTM_NEWLINK {
                let buffer = LinkMessageBuffer::new_checked(reply.payload())
                    .map_err(|e| err("decode", e))?;
                let header = LinkHeader::parse(&buffer).map_err(|e| err("decode", e))?;
                index = Some(header.index);
            }
            Ok(())
        });
        match asked {
            Ok(()) => Ok(index),
            Err(NetError::Netlink(m)) if m.contains("No such device") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates a bridge.
    pub fn create_bridge(&mut self, name: &str) -> Result<(), NetError> {
        let mut message = LinkMessage::default();
        message
            .attributes
            .push(LinkAttribute::IfName(name.to_string()));
        message
            .attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        self.request(
            RouteNetlinkMessage::NewLink(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// Creates a veth pair `host` / `peer`: the host end enslaved to `bridge` and up, the peer (with
    /// MAC `mac`) directly in network namespace `netns` (a fd).
    pub fn create_veth(
        &mut self,
        host: &str,
        peer: &str,
        mac: [u8; 6],
        netns: RawFd,
        bridge: u32,
    ) -> Result<(), NetError> {
        let mut peer_message = LinkMessage::default();
        peer_message
            .attributes
            .push(LinkAttribute::IfName(peer.to_string()));
        peer_message
            .attributes
            .push(LinkAttribute::Address(mac.to_vec()));
        peer_message.attributes.push(LinkAttribute::NetNsFd(netns));
        // The host end is created enslaved to the bridge and up: no lookups and SETLINKs afterwards.
        let mut message = LinkMessage::default();
        message.header.flags = LinkFlags::Up;
        message.header.change_mask = LinkFlags::Up;
        message
            .attributes
            .push(LinkAttribute::IfName(host.to_string()));
        message.attributes.push(LinkAttribute::Controller(bridge));
        message.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_message))),
        ]));
        self.request(
            RouteNetlinkMessage::NewLink(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// Brings link `index` up.
    pub fn set_up(&mut self, index: u32) -> Result<(), NetError> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        message.header.flags = LinkFlags::Up;
        message.header.change_mask = LinkFlags::Up;
        self.request(RouteNetlinkMessage::SetLink(message), 0)
            .map(drop)
    }

    /// Deletes link `index` (for a veth, both ends go).
    pub fn delete_link(&mut self, index: u32) -> Result<(), NetError> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        self.request(RouteNetlinkMessage::DelLink(message), 0)
            .map(drop)
    }

    /// Adds `address/prefix` to link `index` (EEXIST is fine).
    pub fn add_address(
        &mut self,
        index: u32,
        address: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), NetError> {
        let mut message = AddressMessage::default();
        message.header.family = AddressFamily::Inet;
        message.header.prefix_len = prefix;
        message.header.index = index;
        message
            .attributes
            .push(AddressAttribute::Local(IpAddr::V4(address)));
        message
            .attributes
            .push(AddressAttribute::Address(IpAddr::V4(address)));
        match self.request(
            RouteNetlinkMessage::NewAddress(message),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Ok(_) | Err(NetError::Exists) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Adds the default route via `gateway`.
    pub fn add_default_route(&mut self, gateway: Ipv4Addr) -> Result<(), NetError> {
        let mut message = RouteMessage::default();
        message.header.address_family = AddressFamily::Inet;
        message.header.table = RouteHeader::RT_TABLE_MAIN;
        message.header.protocol = RouteProtocol::Boot;
        message.header.scope = RouteScope::Universe;
        message.header.kind = RouteType::Unicast;
        message
            .attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
        self.request(
            RouteNetlinkMessage::NewRoute(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }
}
