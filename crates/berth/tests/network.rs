//! Networking with real namespaces and real traffic (loopback, the host's own address, and the test
//! store's own bridge only).

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::{stderr, stdout, Berth};

/// A plain HTTP GET; retried while the server comes up.
fn http_get(addr: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let attempt = (|| -> std::io::Result<String> {
            let mut s = TcpStream::connect(addr)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })();
        match attempt {
            Ok(text) if text.contains("200 OK") => return text,
            _ if Instant::now() > deadline => panic!("no answer from {addr}: {attempt:?}"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Runs `berth ARGS` until its stdout is `want` (servers take a moment to come up); fails with `what`
/// and the last stderr after 15 s.
fn wait_for_output(b: &Berth, args: &[&str], want: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = b.run(args);
        if String::from_utf8_lossy(&out.stdout) == want {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {}", stderr(&out));
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A global IPv4 address of this host (not loopback), if it has one.
fn host_address() -> Option<String> {
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.contains(" docker0 ") && !l.contains(" brt") && !l.contains("berth0"))
        .find_map(|l| {
            let addr = l.split_whitespace().nth(3)?;
            Some(addr.split('/').next()?.to_string())
        })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

const HTTPD: &str =
    "mkdir -p /www && echo hello-$HOSTNAME > /www/index.html && exec httpd -f -p 80 -h /www";

#[test]
fn published_ports_answer_on_loopback_and_the_host_address() {
    let b = Berth::with_busybox();
    let port = free_port();
    b.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--hostname",
        "web1",
        "-p",
        &format!("{port}:80"),
        "-p",
        "127.0.0.1::80",
        "busybox",
        "sh",
        "-c",
        HTTPD,
    ]);
    assert!(http_get(&format!("127.0.0.1:{port}")).contains("hello-web1"));
    if let Some(ip) = host_address() {
        assert!(http_get(&format!("{ip}:{port}")).contains("hello-web1"));
    }
    // A random host port on 127.0.0.1, shown by `port`, ps and inspect.
    let mapping = b.ok(&["port", "web"]);
    assert!(
        mapping.contains(&format!("80/tcp -> 0.0.0.0:{port}")),
        "{mapping}"
    );
    let random = mapping
        .lines()
        .find_map(|l| l.strip_prefix("80/tcp -> 127.0.0.1:"))
        .expect("random loopback port")
        .trim()
        .to_string();
    assert!(http_get(&format!("127.0.0.1:{random}")).contains("hello-web1"));
    assert!(b.ok(&["ps"]).contains(&format!("0.0.0.0:{port}->80/tcp")));
    let ip = b.ok(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", "web"]);
    assert!(ip.trim().parse::<std::net::Ipv4Addr>().is_ok(), "{ip}");
    // Another container reaches it by address over the bridge.
    let out = b.ok(&[
        "run",
        "--rm",
        "busybox",
        "wget",
        "-qO-",
        &format!("http://{}/", ip.trim()),
    ]);
    assert_eq!(out, "hello-web1\n");
    // And through the host's address (hairpin): from the same network, from the container itself,
    // from another network.
    if let Some(host) = host_address() {
        let url = format!("http://{host}:{port}/");
        assert_eq!(
            b.ok(&["run", "--rm", "busybox", "wget", "-qO-", &url]),
            "hello-web1\n"
        );
        assert_eq!(b.ok(&["exec", "web", "wget", "-qO-", &url]), "hello-web1\n");
        b.ok(&["network", "create", "elsewhere"]);
        assert_eq!(
            b.ok(&[
                "run",
                "--rm",
                "--network",
                "elsewhere",
                "busybox",
                "wget",
                "-qO-",
                &url
            ]),
            "hello-web1\n"
        );
    }

    // The same host port again is refused with a clear error, and leaves nothing behind.
    let out = b.run(&[
        "run",
        "-d",
        "--name",
        "web2",
        "-p",
        &format!("{port}:80"),
        "busybox",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains(&format!("0.0.0.0:{port} failed: port is already allocated")),
        "{}",
        stderr(&out)
    );
    // A port a host process listens on is refused too.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = listener.local_addr().unwrap().port();
    let out = b.run(&[
        "run",
        "--rm",
        "-p",
        &format!("127.0.0.1:{busy}:80"),
        "busybox",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("port is already allocated"));
    // Neither refused container kept its veth pair (made while it was created) or its address.
    let web2 = b.ok(&["inspect", "-f", "{{.Id}}", "web2"]);
    let links = std::process::Command::new("ip")
        .args(["-br", "link"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&links.stdout).contains(&format!("vb{}", &web2[..11])));
    let leases = std::fs::read_dir(b.root.join("networks/bridge/leases")).unwrap();
    assert_eq!(leases.count(), 1, "only web's lease is left");

    // Removal takes the rules and the veth with it.
    let id = b.ok(&["inspect", "-f", "{{.Id}}", "web"]);
    b.ok(&["rm", "-f", "web"]);
    let rules = std::process::Command::new("iptables")
        .args(["-t", "nat", "-S"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&rules.stdout).contains(id.trim()));
    let links = std::process::Command::new("ip")
        .args(["-br", "link"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&links.stdout).contains(&format!("vb{}", &id[..11])));
}

#[test]
fn containers_reach_the_host_and_udp_is_published() {
    let b = Berth::with_busybox();
    // A server the test runs on the host, reached at the bridge's gateway address.
    let listener = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).unwrap();
        got
    });
    let out = b.ok(&[
        "run",
        "--rm",
        "busybox",
        "sh",
        "-c",
        &format!(
            "gw=$(ip route | awk '/default/ {{print $3}}'); echo from-container | nc $gw {port}"
        ),
    ]);
    assert_eq!(out, "");
    assert_eq!(server.join().unwrap(), "from-container\n");

    // UDP: a datagram to the published port arrives in the container.
    let udp_port = {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap().port()
    };
    // Debian's busybox has no UDP server: the host's python3 runs in the container (host /usr mounted).
    b.ok(&[
        "run", "-d", "--name", "udp", "-p", &format!("127.0.0.1:{udp_port}:9999/udp"), "-v",
        "/usr:/usr:ro", "-v", "/usr/lib:/lib:ro", "-v", "/usr/lib64:/lib64:ro", "busybox",
        "/usr/bin/python3", "-c",
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind(('0.0.0.0', 9999))\n\
         while True:\n    d, a = s.recvfrom(100)\n    print(d.decode().strip(), flush=True)",
    ]);
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        sender
            .send_to(b"datagram\n", ("127.0.0.1", udp_port))
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        if b.ok(&["logs", "udp"]).contains("datagram") {
            break;
        }
        assert!(Instant::now() < deadline, "the datagram never arrived");
    }
}

#[test]
fn network_modes_and_bad_specs() {
    let b = Berth::with_busybox();
    // none: only loopback, and it is up.
    let out = b.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "busybox",
        "sh",
        "-c",
        "ls /sys/class/net; ping -c1 -W1 127.0.0.1 >/dev/null && echo lo-ok",
    ]);
    assert_eq!(out, "lo\nlo-ok\n");
    // host: the host's interfaces.
    let out = b.ok(&[
        "run",
        "--rm",
        "--network",
        "host",
        "busybox",
        "ls",
        "/sys/class/net",
    ]);
    assert!(out.lines().count() > 1, "{out}");
    // ... and the host's name, as with Docker.
    let out = b.run(&["run", "--rm", "--network", "host", "busybox", "hostname"]);
    let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(stdout(&out), host_name);
    // --add-host name:host-gateway is the default bridge's gateway, as with Docker.
    let hosts = b.ok(&[
        "run",
        "--rm",
        "--add-host",
        "hgw:host-gateway",
        "busybox",
        "grep",
        "hgw",
        "/etc/hosts",
    ]);
    let gateway = b.ok(&[
        "network",
        "inspect",
        "-f",
        "{{range .IPAM.Config}}{{.Gateway}}{{end}}",
        "bridge",
    ]);
    assert_eq!(hosts, format!("{}\thgw\n", gateway.trim()));
    // bridge (the default): eth0 with an address of the network, a default route.
    let out = b.ok(&[
        "run",
        "--rm",
        "busybox",
        "sh",
        "-c",
        "ip -4 -o addr show eth0 | awk '{print $4}'; ip route | grep -c default",
    ]);
    let mut lines = out.lines();
    let cidr = lines.next().unwrap_or_default();
    assert!(cidr.ends_with("/24"), "{out}");
    assert_eq!(lines.next(), Some("1"));
    let subnet = b.ok(&[
        "network",
        "inspect",
        "-f",
        "{{json .IPAM.Config}}",
        "bridge",
    ]);
    assert!(subnet.contains("Subnet"), "{subnet}");

    for bad in [
        "80:",
        "a:80",
        "1.2.3:80:80",
        "8080-8081:80-85",
        "80/sctp",
        "0:0",
        "99999:80",
    ] {
        let out = b.run(&["run", "--rm", "-p", bad, "busybox", "true"]);
        assert_eq!(out.status.code(), Some(125), "-p {bad}: {}", stderr(&out));
        assert!(!stderr(&out).is_empty());
    }
    let out = b.run(&["run", "--rm", "--network", "nosuchnet", "busybox", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("network nosuchnet not found"));
    // Leases come back: many short-lived containers never run out of a /24.
    for _ in 0..5 {
        b.ok(&["run", "--rm", "busybox", "true"]);
    }
    let leases = b.root.join("networks/bridge/leases");
    assert_eq!(
        std::fs::read_dir(&leases).map(|d| d.count()).unwrap_or(0),
        0
    );
}

#[test]
fn user_networks_are_isolated_and_validated() {
    let b = Berth::with_busybox();
    b.ok(&["network", "create", "--subnet", "10.231.7.0/24", "front"]);
    b.ok(&["network", "create", "back"]);
    b.ok(&["network", "create", "--internal", "vault"]);
    let ls = b.ok(&["network", "ls", "--format", "{{.Name}}"]);
    for name in ["bridge", "front", "back", "vault", "host", "none"] {
        assert!(ls.lines().any(|l| l == name), "{ls}");
    }
    b.ok(&[
        "run",
        "-d",
        "--name",
        "f1",
        "--network",
        "front",
        "--ip",
        "10.231.7.50",
        "busybox",
        "sh",
        "-c",
        "mkdir /w && echo f1 > /w/index.html && exec httpd -f -p 80 -h /w",
    ]);
    b.ok(&[
        "run",
        "-d",
        "--name",
        "b1",
        "--network",
        "back",
        "busybox",
        "sh",
        "-c",
        "mkdir /w && echo b1 > /w/index.html && exec httpd -f -p 80 -h /w",
    ]);
    assert_eq!(
        b.ok(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", "f1"]),
        "10.231.7.50\n"
    );
    // Same network: reachable.
    wait_for_output(
        &b,
        &[
            "run",
            "--rm",
            "--network",
            "front",
            "busybox",
            "wget",
            "-qO-",
            "http://10.231.7.50/",
        ],
        "f1\n",
        "f1 never answered",
    );
    // Another network: dropped (wget would hang; nc gives up after 2 s).
    let b1 = b.ok(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", "b1"]);
    let out = b.run(&[
        "run",
        "--rm",
        "--network",
        "front",
        "busybox",
        "sh",
        "-c",
        &format!("echo x | nc -w 2 {} 80 && echo reached", b1.trim()),
    ]);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("reached"),
        "networks are not isolated"
    );
    // Internal: no way out.
    let out = b.run(&[
        "run",
        "--rm",
        "--network",
        "vault",
        "busybox",
        "sh",
        "-c",
        "ip route | grep -c default",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0");

    // Bad input, each refused with a clear error.
    let cases: [(&[&str], &str); 6] = [
        (
            &["network", "create", "--subnet", "10.231.7.128/25", "clash"],
            "overlaps",
        ),
        (
            &[
                "network",
                "create",
                "--subnet",
                "10.232.0.0/24",
                "--gateway",
                "10.9.9.9",
                "gw",
            ],
            "no matching subnet",
        ),
        (&["network", "create", "front"], "already exists"),
        (&["network", "create", "bad name"], "invalid network name"),
        (
            &[
                "run",
                "--rm",
                "--network",
                "front",
                "--ip",
                "10.231.7.50",
                "busybox",
                "true",
            ],
            "Address already in use",
        ),
        (
            &[
                "run",
                "--rm",
                "--network",
                "front",
                "--ip",
                "10.9.9.9",
                "busybox",
                "true",
            ],
            "does not belong",
        ),
    ];
    for (args, message) in cases {
        let out = b.run(args);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr(&out).contains(message), "{args:?}: {}", stderr(&out));
    }
    let out = b.run(&["network", "rm", "front"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("has active endpoints"),
        "{}",
        stderr(&out)
    );
    b.ok(&["rm", "-f", "f1"]);
    b.ok(&["network", "rm", "front"]);
    let out = b.run(&["network", "rm", "bridge"]);
    assert!(stderr(&out).contains("pre-defined network"));
    // system prune removes networks no container uses (vault's containers are gone; back has b1).
    b.ok(&["system", "prune", "-f"]);
    let ls = b.ok(&["network", "ls", "--format", "{{.Name}}"]);
    assert!(
        !ls.lines().any(|l| l == "vault") && ls.lines().any(|l| l == "back"),
        "{ls}"
    );

    // --add-host and --dns land in the container's files.
    let out = b.ok(&[
        "run",
        "--rm",
        "--add-host",
        "db:10.1.2.3",
        "--dns",
        "9.9.9.9",
        "--dns-search",
        "example.com",
        "busybox",
        "sh",
        "-c",
        "grep db /etc/hosts; cat /etc/resolv.conf",
    ]);
    assert!(out.contains("10.1.2.3\tdb"), "{out}");
    assert!(
        out.contains("nameserver 9.9.9.9") && out.contains("search example.com"),
        "{out}"
    );
}

/// Asks a DNS server over a TCP connection for the A records of `name`; returns the addresses.
fn tcp_lookup(stream: &mut std::net::TcpStream, name: &str) -> Vec<String> {
    use std::io::{Read, Write};
    let mut query = vec![0x42, 0x42, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    let mut framed = (query.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&query);
    stream.write_all(&framed).unwrap();
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).unwrap();
    let mut reply = vec![0u8; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut reply).unwrap();
    assert_eq!(&reply[..2], &[0x42, 0x42], "the reply answers the query");
    let count = u16::from_be_bytes([reply[6], reply[7]]) as usize;
    // The records follow the question; each A record is 16 bytes ending with the address.
    (0..count)
        .map(|i| {
            let end = query.len() + 16 * (i + 1);
            let ip = &reply[end - 4..end];
            format!("{}.{}.{}.{}", ip[0], ip[1], ip[2], ip[3])
        })
        .collect()
}

#[test]
fn containers_resolve_each_other_by_name_on_user_networks() {
    let b = Berth::with_busybox();
    b.ok(&["network", "create", "appnet"]);
    b.ok(&[
        "run",
        "-d",
        "--name",
        "data-service",
        "--network",
        "appnet",
        "--network-alias",
        "pool",
        "busybox",
        "sh",
        "-c",
        "mkdir /w && echo data > /w/index.html && exec httpd -f -p 5001 -h /w",
    ]);
    b.ok(&[
        "run",
        "-d",
        "--name",
        "second",
        "--network",
        "appnet",
        "--network-alias",
        "pool",
        "busybox",
        "sleep",
        "300",
    ]);
    let ip1 = b.ok(&[
        "inspect",
        "-f",
        "{{.NetworkSettings.IPAddress}}",
        "data-service",
    ]);
    let ip2 = b.ok(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", "second"]);
    let lookup = |name: &str| {
        b.run(&[
            "run",
            "--rm",
            "--network",
            "appnet",
            "busybox",
            "nslookup",
            name,
        ])
    };
    // By name (the seeds' http://data-service:5001), by alias (all addresses), by short ID.
    wait_for_output(
        &b,
        &[
            "run",
            "--rm",
            "--network",
            "appnet",
            "busybox",
            "wget",
            "-qO-",
            "http://data-service:5001/",
        ],
        "data\n",
        "no answer by name",
    );
    let pool = String::from_utf8_lossy(&lookup("pool").stdout).into_owned();
    assert!(
        pool.contains(ip1.trim()) && pool.contains(ip2.trim()),
        "{pool}"
    );
    // Over TCP too (what clients fall back to for truncated answers), here asked from the host.
    let net: serde_json::Value =
        serde_json::from_str(&b.ok(&["network", "inspect", "appnet"])).unwrap();
    let gateway = net[0]["IPAM"]["Config"][0]["Gateway"].as_str().unwrap();
    let mut tcp = std::net::TcpStream::connect((gateway, 53)).unwrap();
    let mut found = tcp_lookup(&mut tcp, "pool");
    found.sort();
    let mut want = vec![ip1.trim().to_string(), ip2.trim().to_string()];
    want.sort();
    assert_eq!(found, want);
    // Several queries on one connection.
    assert_eq!(
        tcp_lookup(&mut tcp, "data-service"),
        vec![ip1.trim().to_string()]
    );
    let id = b.ok(&["inspect", "-f", "{{.Id}}", "second"]);
    assert!(String::from_utf8_lossy(&lookup(&id[..12]).stdout).contains(ip2.trim()));
    // A stopped container's name goes away; started again, it resolves again.
    b.ok(&["stop", "-t", "0", "second"]);
    let out = lookup("second");
    assert!(!out.status.success() || !String::from_utf8_lossy(&out.stdout).contains(ip2.trim()));
    b.ok(&["start", "second"]);
    let ip2 = b.ok(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", "second"]);
    assert!(String::from_utf8_lossy(&lookup("second").stdout).contains(ip2.trim()));
    // The default bridge does not resolve container names (Docker's behaviour).
    b.ok(&["run", "-d", "--name", "onbridge", "busybox", "sleep", "300"]);
    let out = b.run(&[
        "run",
        "--rm",
        "busybox",
        "sh",
        "-c",
        "ping -c1 -W1 onbridge",
    ]);
    assert!(!out.status.success());
    // Aliases need a user-defined network.
    let out = b.run(&["run", "--rm", "--network-alias", "x", "busybox", "true"]);
    assert_eq!(out.status.code(), Some(125));
}

#[test]
fn links_and_shared_network_namespaces() {
    let b = Berth::with_busybox();
    b.ok(&[
        "run",
        "-d",
        "--name",
        "db",
        "--expose",
        "80",
        "--expose",
        "5432/udp",
        "-e",
        "GREETING=hi there",
        "busybox",
        "sh",
        "-c",
        "mkdir /w && echo db > /w/index.html && exec httpd -f -p 80 -h /w",
    ]);
    let ip = b.ok(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", "db"]);
    // --link: the alias and the name resolve through /etc/hosts on the default bridge.
    wait_for_output(
        &b,
        &[
            "run",
            "--rm",
            "--link",
            "db:database",
            "busybox",
            "wget",
            "-qO-",
            "http://database/",
        ],
        "db\n",
        "link never answered",
    );
    // And Docker's link environment.
    let ip = ip.trim();
    let env = b.ok(&[
        "run", "--rm", "--name", "linker", "--link", "db:my-db", "busybox", "env",
    ]);
    for want in [
        format!("MY_DB_PORT=tcp://{ip}:80"),
        format!("MY_DB_PORT_80_TCP=tcp://{ip}:80"),
        format!("MY_DB_PORT_80_TCP_ADDR={ip}"),
        "MY_DB_PORT_80_TCP_PORT=80".to_string(),
        "MY_DB_PORT_80_TCP_PROTO=tcp".to_string(),
        format!("MY_DB_PORT_5432_UDP=udp://{ip}:5432"),
        "MY_DB_NAME=/linker/my-db".to_string(),
        "MY_DB_ENV_GREETING=hi there".to_string(),
    ] {
        assert!(env.lines().any(|l| l == want), "{want} missing in:\n{env}");
    }
    assert!(!env.contains("MY_DB_ENV_PATH"), "{env}");
    // --network container:db shares db's stack: its server is on 127.0.0.1, its address is eth0's.
    let out = b.ok(&[
        "run",
        "--rm",
        "--network",
        "container:db",
        "busybox",
        "sh",
        "-c",
        "wget -qO- http://127.0.0.1/; ip -4 -o addr show eth0",
    ]);
    assert!(out.starts_with("db\n") && out.contains(ip.trim()), "{out}");
    for args in [
        &["run", "--rm", "--link", "nosuch", "busybox", "true"][..],
        &[
            "run",
            "--rm",
            "--network",
            "container:nosuch",
            "busybox",
            "true",
        ][..],
        &[
            "run",
            "--rm",
            "--network",
            "container:db",
            "-p",
            "80",
            "busybox",
            "true",
        ][..],
    ] {
        let out = b.run(args);
        assert_eq!(out.status.code(), Some(125), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn network_connect_and_disconnect() {
    let b = Berth::with_busybox();
    b.ok(&["network", "create", "neta"]);
    b.ok(&["network", "create", "netb"]);
    b.ok(&[
        "run",
        "-d",
        "--name",
        "a1",
        "--network",
        "neta",
        "busybox",
        "sleep",
        "300",
    ]);
    b.ok(&[
        "run",
        "-d",
        "--name",
        "b1",
        "--network",
        "netb",
        "busybox",
        "sh",
        "-c",
        "mkdir /w && echo b1 > /w/index.html && exec httpd -f -p 80 -h /w",
    ]);
    b.ok(&["network", "connect", "--alias", "bee", "netb", "a1"]);
    // a1 now has eth1 on netb, reaches b1 by name there, and is known as `bee` on netb.
    let out = b.ok(&[
        "exec",
        "a1",
        "sh",
        "-c",
        "ls /sys/class/net | sort | tr '\\n' ' '",
    ]);
    assert_eq!(out, "eth0 eth1 lo ");
    wait_for_output(
        &b,
        &["exec", "a1", "wget", "-qO-", "http://b1/"],
        "b1\n",
        "b1 unreachable from a1",
    );
    let a1_on_b = b.ok(&[
        "inspect",
        "-f",
        "{{json .NetworkSettings.Networks.netb.IPAddress}}",
        "a1",
    ]);
    let out = b.ok(&["exec", "b1", "nslookup", "bee"]);
    assert!(out.contains(a1_on_b.trim().trim_matches('"')), "{out}");
    // Bad requests.
    for (args, message) in [
        (&["network", "connect", "netb", "a1"][..], "already exists"),
        (
            &["network", "connect", "nosuchnet", "a1"][..],
            "network nosuchnet not found",
        ),
        (
            &["network", "disconnect", "neta", "a1"][..],
            "first network",
        ),
        (&["network", "rm", "netb"][..], "active endpoints"),
    ] {
        let out = b.run(args);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr(&out).contains(message), "{args:?}: {}", stderr(&out));
    }
    // Disconnect takes eth1 away at once; a connection recorded while stopped is made at start.
    b.ok(&["network", "disconnect", "netb", "a1"]);
    assert_eq!(
        b.ok(&[
            "exec",
            "a1",
            "sh",
            "-c",
            "ls /sys/class/net | sort | tr '\\n' ' '"
        ]),
        "eth0 lo "
    );
    b.ok(&["stop", "-t", "0", "a1"]);
    b.ok(&["network", "connect", "netb", "a1"]);
    b.ok(&["start", "a1"]);
    assert_eq!(
        b.ok(&[
            "exec",
            "a1",
            "sh",
            "-c",
            "ls /sys/class/net | sort | tr '\\n' ' '"
        ]),
        "eth0 eth1 lo "
    );
}

#[test]
fn concurrent_runs_never_share_an_address_and_ip_range_is_honoured() {
    let b = Berth::with_busybox();
    b.ok(&[
        "network",
        "create",
        "--subnet",
        "10.233.0.0/24",
        "--ip-range",
        "10.233.0.128/27",
        "ranged",
    ]);
    let out = b.run(&[
        "network",
        "create",
        "--subnet",
        "10.234.0.0/24",
        "--ip-range",
        "10.9.0.0/27",
        "badrange",
    ]);
    assert!(
        stderr(&out).contains("not within subnet"),
        "{}",
        stderr(&out)
    );
    let handles: Vec<_> = (0..16)
        .map(|i| {
            let cmd = b.cmd(&[
                "run",
                "-d",
                "--name",
                &format!("c{i}"),
                "--network",
                "ranged",
                "busybox",
                "sleep",
                "300",
            ]);
            std::thread::spawn(move || {
                let mut cmd = cmd;
                cmd.output().unwrap()
            })
        })
        .collect();
    for h in handles {
        let out = h.join().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let mut ips: Vec<std::net::Ipv4Addr> = (0..16)
        .map(|i| {
            b.ok(&[
                "inspect",
                "-f",
                "{{.NetworkSettings.IPAddress}}",
                &format!("c{i}"),
            ])
            .trim()
            .parse()
            .unwrap()
        })
        .collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 16, "an address was handed out twice: {ips:?}");
    for ip in &ips {
        let o = ip.octets();
        assert!(
            o[0] == 10 && o[1] == 233 && (128..160).contains(&o[3]),
            "{ip} outside the range"
        );
    }
}

#[test]
fn a_crashed_monitor_leaves_no_lease_or_rule_behind() {
    let b = Berth::with_busybox();
    b.ok(&["network", "create", "crashnet"]);
    b.ok(&[
        "run",
        "-d",
        "--name",
        "victim",
        "--network",
        "crashnet",
        "-p",
        "127.0.0.1::80",
        "busybox",
        "sleep",
        "300",
    ]);
    let id = b
        .ok(&["inspect", "-f", "{{.Id}}", "victim"])
        .trim()
        .to_string();
    let monitor = b.monitor_of("victim").to_string();
    std::process::Command::new("kill")
        .args(["-9", &monitor])
        .status()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // The next look at the container finds the monitor gone and cleans up after it.
    assert_eq!(b.ok(&["ps", "-a", "--format", "{{.State}}"]), "exited\n");
    let rules = std::process::Command::new("iptables")
        .args(["-t", "nat", "-S"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&rules.stdout).contains(&id),
        "a DNAT rule survived"
    );
    let leases = b.root.join("networks/crashnet/leases");
    assert_eq!(
        std::fs::read_dir(&leases).map(|d| d.count()).unwrap_or(0),
        0,
        "the lease survived"
    );
    let names = b.root.join("networks/crashnet/names");
    assert_eq!(
        std::fs::read_dir(&names).map(|d| d.count()).unwrap_or(0),
        0,
        "the DNS record survived"
    );
    // And the container starts again with an address.
    b.ok(&["start", "victim"]);
    assert!(!b
        .ok(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", "victim"])
        .trim()
        .is_empty());
}
