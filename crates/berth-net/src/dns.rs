//! Name resolution on user-defined networks: one small DNS server per network (as Podman's aardvark-dns),
//! listening on the network's gateway address (UDP and TCP), answering A queries for the names of the containers on
//! the network (container name, short ID, `--network-alias`es; several containers may share an alias and
//! all their addresses are returned) and relaying everything else to the host's resolvers.
//!
//! The records are files in `<network state>/names/<container id>` (`ip name alias…`), written with a
//! rename when a container is attached and removed when it is detached. The server re-reads them when the
//! directory's mtime changes, so it stays right as containers come, go and restart with new addresses.
//! It runs as its own process (`berth-monitor --dns-server`, started by the first container that needs it) so it
//! can use threads for upstream queries without touching the single-threaded monitors.

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::{NetError, Network};

fn names_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("names")
}

/// Records container `id`'s `names` at `ip` on the network.
pub(crate) fn register(
    state_dir: &Path,
    id: &str,
    ip: Ipv4Addr,
    names: &[String],
) -> Result<(), NetError> {
    let dir = names_dir(state_dir);
    fs::create_dir_all(&dir).map_err(|e| NetError::Io(format!("{}: {e}", dir.display())))?;
    let tmp = dir.join(format!(".{id}.tmp"));
    fs::write(&tmp, format!("{ip} {}\n", names.join(" ")))
        .map_err(|e| NetError::Io(format!("{}: {e}", tmp.display())))?;
    fs::rename(&tmp, dir.join(id)).map_err(|e| NetError::Io(format!("{}: {e}", dir.display())))
}

/// Removes container `id`'s records.
pub(crate) fn unregister(state_dir: &Path, id: &str) {
    let _ = fs::remove_file(names_dir(state_dir).join(id));
}

/// Name (lower case, no trailing dot) to addresses.
fn load(state_dir: &Path) -> HashMap<String, Vec<Ipv4Addr>> {
    let mut map: HashMap<String, Vec<Ipv4Addr>> = HashMap::new();
    let Ok(entries) = fs::read_dir(names_dir(state_dir)) else {
        return map;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let Ok(text) = fs::read_to_string(entry.path()) else {
            continue;
        };
        let mut words = text.split_whitespace();
        let Some(ip) = words.next().and_then(|w| w.parse().ok()) else {
            continue;
        };
        for name in words {
            let list = map.entry(name.to_ascii_lowercase()).or_default();
            if !list.contains(&ip) {
                list.push(ip);
            }
        }
    }
    map
}

/// A name on one of the querying container's other networks (joined with `network connect`): the
/// querier is found by its address among this network's records, then its records on its other
/// networks say which networks those are.
fn on_querier_networks(state_dir: &Path, peer: SocketAddr, name: &str) -> Option<Vec<Ipv4Addr>> {
    let std::net::IpAddr::V4(peer_ip) = peer.ip() else {
        return None;
    };
    let own = names_dir(state_dir);
    let querier = fs::read_dir(&own).ok()?.flatten().find_map(|entry| {
        let text = fs::read_to_string(entry.path()).ok()?;
        let ip: Ipv4Addr = text.split_whitespace().next()?.parse().ok()?;
        (ip == peer_ip).then(|| entry.file_name())
    })?;
    let networks = state_dir.parent()?;
    for entry in fs::read_dir(networks).ok()?.flatten() {
        let other = entry.path();
        if other == state_dir || !names_dir(&other).join(&querier).exists() {
            continue;
        }
        if let Some(addresses) = load(&other).remove(name) {
            return Some(addresses);
        }
    }
    None
}

/// The host's resolvers, for names that are not containers (loopback ones are unreachable from the
/// server's point of view only when they are in another namespace; the server runs on the host).
fn upstreams() -> Vec<SocketAddr> {
    let text = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let servers: Vec<SocketAddr> = text
        .lines()
        .filter_map(|l| l.strip_prefix("nameserver"))
        .filter_map(|s| s.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect();
    if servers.is_empty() {
        vec![SocketAddr::from(([8, 8, 8, 8], 53))]
    } else {
        servers
    }
}

/// The question of a query: (name, qtype, end offset of the question section).
fn question(packet: &[u8]) -> Option<(String, u16, usize)> {
    if packet.len() < 12 || u16::from_be_bytes([packet[4], packet[5]]) != 1 {
        return None;
    }
    let mut labels = Vec::new();
    let mut at = 12;
    loop {
        let len = *packet.get(at)? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None; // compression pointers never appear in a query's question
        }
        labels.push(String::from_utf8_lossy(packet.get(at..at + len)?).to_ascii_lowercase());
        at += len;
    }
    let qtype = u16::from_be_bytes([*packet.get(at)?, *packet.get(at + 1)?]);
    Some((labels.join("."), qtype, at + 4))
}

/// An answer for a container name: A records for `addresses` (none for other types: NOERROR, no data),
/// as many as fit in `max_len` bytes; when some do not, the answer is marked truncated (TC) so the
/// client asks again over TCP.
fn answer(
    query: &[u8],
    question_end: usize,
    qtype: u16,
    addresses: &[Ipv4Addr],
    max_len: usize,
) -> Vec<u8> {
    const RECORD: usize = 16;
    let mut out = query[..question_end].to_vec();
    out[2] = 0x80 | (query[2] & 0x01) | 0x04; // response, recursion desired as asked, authoritative
    out[3] = 0x80; // recursion available, NOERROR
    let mut records: Vec<&Ipv4Addr> = if qtype == 1 {
        addresses.iter().collect()
    } else {
        Vec::new()
    };
    let fit = max_len.saturating_sub(question_end) / RECORD;
    if records.len() > fit {
        records.truncate(fit);
        out[2] |= 0x02; // TC
    }
    out[6..8].copy_from_slice(&(records.len() as u16).to_be_bytes());
    out[8..12].fill(0);
    for ip in records {
        out.extend_from_slice(&[0xc0, 12]); // the name: a pointer to the question
        out.extend_from_slice(&[0, 1, 0, 1]); // A, IN
        out.extend_from_slice(&0u32.to_be_bytes()); // TTL 0: containers come and go
        out.extend_from_slice(&[0, 4]);
        out.extend_from_slice(&ip.octets());
    }
    out
}

/// The largest DNS message over UDP without EDNS (RFC 1035).
const UDP_MAX: usize = 512;

/// TCP connections served at once.
const MAX_TCP_CLIENTS: usize = 64;

/// Relays a query over TCP to the upstream resolvers and returns the first answer.
fn forward_tcp(query: &[u8], servers: &[SocketAddr]) -> Option<Vec<u8>> {
    for server in servers {
        let Ok(mut stream) = TcpStream::connect_timeout(server, Duration::from_secs(2)) else {
            continue;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        if write_tcp_message(&mut stream, query).is_err() {
            continue;
        }
        if let Ok(Some(reply)) = read_tcp_message(&mut stream) {
            return Some(reply);
        }
    }
    None
}

/// Reads one length-prefixed message of a DNS TCP connection; `None` at a clean end.
fn read_tcp_message(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match stream.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut message = vec![0u8; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut message)?;
    Ok(Some(message))
}

fn write_tcp_message(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(message.len()).map_err(std::io::Error::other)?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(message);
    stream.write_all(&framed)
}

/// The container names of one network, re-read when their directory changes.
struct Names {
    state_dir: PathBuf,
    cache: HashMap<String, Vec<Ipv4Addr>>,
    seen: Option<SystemTime>,
}

impl Names {
    fn new(state_dir: &Path) -> Self {
        Self {
            state_dir: state_dir.to_path_buf(),
            cache: HashMap::new(),
            seen: None,
        }
    }

    /// The addresses of `name` for a query from `peer`: on this network, or on another network of
    /// the querying container.
    fn lookup(&mut self, name: &str, peer: SocketAddr) -> Option<Vec<Ipv4Addr>> {
        let mtime = fs::metadata(names_dir(&self.state_dir))
            .and_then(|m| m.modified())
            .ok();
        if mtime != self.seen || self.seen.is_none() {
            self.cache = load(&self.state_dir);
            self.seen = mtime;
        }
        let key = name.trim_end_matches('.');
        self.cache
            .get(key)
            .cloned()
            .or_else(|| on_querier_networks(&self.state_dir, peer, key))
    }
}

/// Answers the queries of one TCP connection until the client closes it or stays silent.
fn serve_tcp_client(mut stream: TcpStream, names: &Mutex<Names>, servers: &[SocketAddr]) {
    let Ok(peer) = stream.peer_addr() else {
        return;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    while let Ok(Some(query)) = read_tcp_message(&mut stream) {
        let Some((name, qtype, end)) = question(&query) else {
            return;
        };
        let found = match names.lock() {
            Ok(mut names) => names.lookup(&name, peer),
            Err(_) => return,
        };
        let reply = match found {
            Some(addresses) => answer(&query, end, qtype, &addresses, usize::from(u16::MAX)),
            None => match forward_tcp(&query, servers) {
                Some(reply) => reply,
                None => return,
            },
        };
        if write_tcp_message(&mut stream, &reply).is_err() {
            return;
        }
    }
}

/// Relays a query to the upstream resolvers and returns the first answer.
fn forward(query: &[u8], servers: &[SocketAddr]) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    for server in servers {
        if socket.send_to(query, server).is_err() {
            continue;
        }
        let mut buf = vec![0u8; 4096];
        if let Ok((n, _)) = socket.recv_from(&mut buf) {
            buf.truncate(n);
            return Some(buf);
        }
    }
    None
}

fn lock_path(network: &Network) -> PathBuf {
    PathBuf::from(format!("/run/berth-net/{}.dns", network.bridge))
}

/// Serves DNS for `network` until the network is removed (its state directory disappears).
pub fn serve(network: &Network) -> Result<(), NetError> {
    // Started by a monitor, which ignores SIGTERM and friends; ignored dispositions survive exec, and
    // `network rm` stops this server with SIGTERM.
    for sig in [
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGHUP,
    ] {
        // SAFETY: SIG_DFL installs no handler code; this process has no other threads yet.
        let _ = unsafe { nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigDfl) };
    }
    let _ = fs::create_dir_all("/run/berth-net");
    let lock = fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path(network))
        .map_err(|e| NetError::Io(format!("dns lock: {e}")))?;
    #[allow(deprecated)]
    if nix::fcntl::flock(
        lock.as_raw_fd(),
        nix::fcntl::FlockArg::LockExclusiveNonblock,
    )
    .is_err()
    {
        return Ok(()); // another server already answers for this network
    }
    let _ = fs::write(lock_path(network), std::process::id().to_string());
    let socket = UdpSocket::bind((network.gateway, 53))
        .map_err(|e| NetError::Io(format!("dns: bind {}:53: {e}", network.gateway)))?;
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| NetError::Io(format!("dns: {e}")))?;
    // TCP too, as Docker's resolver: clients retry there when an answer was truncated.
    let tcp = TcpListener::bind((network.gateway, 53))
        .map_err(|e| NetError::Io(format!("dns: bind {}:53/tcp: {e}", network.gateway)))?;
    let servers = upstreams();
    let names = Arc::new(Mutex::new(Names::new(&network.state_dir)));
    {
        let (names, servers) = (names.clone(), servers.clone());
        let open = Arc::new(AtomicUsize::new(0));
        std::thread::spawn(move || {
            for stream in tcp.incoming().flatten() {
                // A container opening connections without end gets refused, not a thread each.
                if open.load(Ordering::SeqCst) >= MAX_TCP_CLIENTS {
                    continue;
                }
                open.fetch_add(1, Ordering::SeqCst);
                let (names, servers, open) = (names.clone(), servers.clone(), open.clone());
                std::thread::spawn(move || {
                    serve_tcp_client(stream, &names, &servers);
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
    }
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf) {
            Ok(r) => r,
            Err(_) => {
                if !network.state_dir.exists() {
                    return Ok(());
                }
                continue;
            }
        };
        let query = buf[..n].to_vec();
        let Some((name, qtype, end)) = question(&query) else {
            continue;
        };
        let found = match names.lock() {
            Ok(mut names) => names.lookup(&name, peer),
            Err(_) => return Err(NetError::Io("dns: name table poisoned".into())),
        };
        if let Some(addresses) = found {
            let _ = socket.send_to(&answer(&query, end, qtype, &addresses, UDP_MAX), peer);
            continue;
        }
        let reply_socket = match socket.try_clone() {
            Ok(s) => s,
            Err(_) => continue,
        };
        let servers = servers.clone();
        std::thread::spawn(move || {
            if let Some(reply) = forward(&query, &servers) {
                let _ = reply_socket.send_to(&reply, peer);
            }
        });
    }
}

/// Starts `berth-monitor --dns-server` for `network` unless one runs (`exe` and `args` make the command line).
pub fn ensure_server(
    network: &Network,
    exe: &Path,
    args: &[&std::ffi::OsStr],
) -> Result<(), NetError> {
    let lock = lock_path(network);
    if let Ok(file) = fs::File::open(&lock) {
        #[allow(deprecated)]
        let free =
            nix::fcntl::flock(file.as_raw_fd(), nix::fcntl::FlockArg::LockSharedNonblock).is_ok();
        if !free {
            return Ok(()); // held: a server is running
        }
    }
    let mut command = std::process::Command::new(exe);
    command
        .args(args)
        .current_dir("/")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: setsid is async-signal-safe and touches no memory; the child runs it before exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let child = command
        .spawn()
        .map_err(|e| NetError::Io(format!("start the DNS server: {e}")))?;
    std::mem::forget(child);
    // Wait until it answers (holds its lock), so the container's first lookup does not race it.
    for _ in 0..100 {
        if let Ok(file) = fs::File::open(&lock) {
            #[allow(deprecated)]
            if nix::fcntl::flock(file.as_raw_fd(), nix::fcntl::FlockArg::LockSharedNonblock)
                .is_err()
            {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// Stops the DNS server of a network being removed.
pub fn stop_server(network: &Network) {
    if let Ok(text) = fs::read_to_string(lock_path(network)) {
        if let Ok(pid) = text.trim().parse::<i32>() {
            if pid > 1 {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
                // Wait for it to let go of the gateway's port 53: a network created next may get the
                // same subnet, and its server must be able to bind.
                for _ in 0..200 {
                    if !Path::new(&format!("/proc/{pid}")).exists() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
    let _ = fs::remove_file(lock_path(network));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.trim_end_matches('.').split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&[0, 1]);
        q
    }

    #[test]
    fn answers_a_queries_with_every_address() {
        let q = query("Web.", 1);
        let (name, qtype, end) = question(&q).unwrap();
        assert_eq!((name.as_str(), qtype, end), ("web", 1, q.len()));
        let ips = [Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3)];
        let a = answer(&q, end, qtype, &ips, UDP_MAX);
        assert_eq!(&a[0..2], &[0x12, 0x34]);
        assert_eq!(u16::from_be_bytes([a[6], a[7]]), 2);
        assert_eq!(&a[a.len() - 4..], &[10, 0, 0, 3]);
        let aaaa = answer(&q, end, 28, &ips, UDP_MAX);
        assert_eq!(u16::from_be_bytes([aaaa[6], aaaa[7]]), 0);
        assert!(question(&q[..5]).is_none());
        // 40 addresses do not fit in a UDP message: as many as fit, marked truncated.
        let many: Vec<Ipv4Addr> = (0..40).map(|i| Ipv4Addr::new(10, 0, 1, i)).collect();
        let udp = answer(&q, end, 1, &many, UDP_MAX);
        assert!(udp.len() <= UDP_MAX);
        assert_eq!(udp[2] & 0x02, 0x02);
        assert_eq!(
            u16::from_be_bytes([udp[6], udp[7]]) as usize,
            (UDP_MAX - end) / 16
        );
        let tcp = answer(&q, end, 1, &many, usize::from(u16::MAX));
        assert_eq!(tcp[2] & 0x02, 0);
        assert_eq!(u16::from_be_bytes([tcp[6], tcp[7]]), 40);
    }
}
