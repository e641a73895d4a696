//! Test hosts in network namespaces: one server and N receivers, each with a veth into a
//! bridge that lives in its own namespace, so loss can be injected on a bridge port.
//!
//! Names are unique per testbed, everything is removed on drop (also when a test panics),
//! and addresses live only inside these namespaces.

use std::{
    fs::File,
    net::Ipv4Addr,
    os::fd::AsRawFd,
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context, Result, bail};

/// One test host.
#[derive(Clone, Debug)]
pub struct Host {
    /// Network namespace name.
    pub ns: String,
    /// Its interface towards the bridge.
    pub iface: String,
    /// Its IPv4 address.
    pub addr: Ipv4Addr,
    /// The bridge-side veth peer (where loss rules attach).
    pub bridge_port: String,
}

/// A bridge with a server and receivers, each in its own namespace.
pub struct Testbed {
    /// The bridge's namespace.
    pub bridge_ns: String,
    /// The sending host.
    pub server: Host,
    /// The receiving hosts.
    pub receivers: Vec<Host>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Runs `ip` with `args`, failing with its stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    run("ip", args)
}

/// Runs a command to completion, failing with its stderr.
pub fn run(prog: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {prog} (is it installed? `cargo xtask setup`)"))?;
    if !out.status.success() {
        bail!(
            "{prog} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs `args` inside namespace `ns`.
pub fn in_ns(ns: &str, args: &[&str]) -> Result<()> {
    let mut full = vec!["netns", "exec", ns];
    full.extend_from_slice(args);
    ip(&full)
}

/// How long after its querier starts the test bridge snoops (its query response interval,
/// 0.5 s, and a margin).
const QUERIER_TRUSTED: std::time::Duration = std::time::Duration::from_millis(600);

impl Testbed {
    /// Builds a bridge with a server and `receivers` receivers, all links up with `mtu`.
    pub fn new(receivers: usize, mtu: u32) -> Result<Self> {
        anyhow::ensure!(
            (1..=200).contains(&receivers),
            "1..=200 receivers supported"
        );
        // pid + counter keeps names unique across parallel tests and concurrent runs.
        let id = format!(
            "{:x}{:x}",
            std::process::id() & 0xffff,
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let net = 10 + (std::process::id() % 200) as u8;
        let sub = (COUNTER.load(Ordering::Relaxed) % 250) as u8;
        let bridge_ns = format!("lt{id}br");
        let mk = |name: &str, n: u8| Host {
            ns: format!("lt{id}{name}"),
            iface: format!("lt{id}{name}"),
            addr: Ipv4Addr::new(10, net, sub, n),
            bridge_port: format!("lt{id}{name}p"),
        };
        let server = mk("s", 1);
        let receivers: Vec<Host> = (0..receivers)
            .map(|i| mk(&format!("r{i}"), 10 + i as u8))
            .collect();
        let bed = Self {
            bridge_ns,
            server,
            receivers,
        };
        // From here on Drop cleans up whatever was created, also on a failed step.
        bed.build(mtu)?;
        Ok(bed)
    }

    fn build(&self, mtu: u32) -> Result<()> {
        let mtu = mtu.to_string();
        let br = &self.bridge_ns;
        ip(&["netns", "add", br])?;
        in_ns(
            br,
            &[
                "ip",
                "link",
                "add",
                "br0",
                "type",
                "bridge",
                "mcast_snooping",
                "1",
                "mcast_query_response_interval",
                "50",
                "mcast_igmp_version",
                "3",
                "mcast_mld_version",
                "2",
            ],
        )?;
        // IGMP snooping, as a LAN switch does it: a group goes only to the ports that
        // joined it. The bridge snoops only once it knows of a querier (else it floods),
        // so it is its own, trusted after the response interval (0.5 s, not 10 s); the
        // interval must be set before the querier is turned on to apply. IGMPv3 queries
        // keep the hosts on IGMPv3: under an IGMPv2 querier a host delays its first
        // report of a group by up to 200 ms, and reports of several groups went missing.
        let querier_on = std::time::Instant::now();
        in_ns(
            br,
            &[
                "ip",
                "link",
                "set",
                "br0",
                "type",
                "bridge",
                "mcast_querier",
                "1",
            ],
        )?;
        in_ns(br, &["ip", "link", "set", "br0", "mtu", &mtu, "up"])?;
        // A switch does not run the IP firewall on the frames it forwards; with br_netfilter
        // loaded (Docker loads it) the bridge would, for every frame and every copy of a
        // multicast frame. The loss rule is a bridge-family nft rule and needs none of it.
        // Without br_netfilter these keys do not exist and there is nothing to turn off.
        let _ = in_ns(
            br,
            &[
                "sysctl",
                "-qw",
                "net.bridge.bridge-nf-call-iptables=0",
                "net.bridge.bridge-nf-call-ip6tables=0",
                "net.bridge.bridge-nf-call-arptables=0",
            ],
        );
        for h in self.hosts() {
            ip(&["netns", "add", &h.ns])?;
            // Link-local IPv6 must be usable at once for the IPv6 multicast tests.
            in_ns(
                &h.ns,
                &["sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0"],
            )?;
            ip(&[
                "link",
                "add",
                &h.iface,
                "netns",
                &h.ns,
                "mtu",
                &mtu,
                "type",
                "veth",
                "peer",
                "name",
                &h.bridge_port,
                "netns",
                br,
                "mtu",
                &mtu,
            ])?;
            in_ns(
                br,
                &["ip", "link", "set", &h.bridge_port, "master", "br0", "up"],
            )?;
            in_ns(&h.ns, &["ip", "link", "set", "lo", "up"])?;
            in_ns(
                &h.ns,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("{}/24", h.addr),
                    "dev",
                    &h.iface,
                ],
            )?;
            in_ns(&h.ns, &["ip", "link", "set", &h.iface, "up"])?;
            // Multicast leaves through the test link, not a default route that does not exist.
            in_ns(
                &h.ns,
                &["ip", "route", "add", "224.0.0.0/4", "dev", &h.iface],
            )?;
            in_ns(
                &h.ns,
                &[
                    "ip", "-6", "route", "add", "ff00::/8", "dev", &h.iface, "table", "local",
                ],
            )
            .ok();
        }
        // Until the querier is trusted the bridge floods: wait that out.
        std::thread::sleep(QUERIER_TRUSTED.saturating_sub(querier_on.elapsed()));
        Ok(())
    }

    /// The server followed by the receivers.
    pub fn hosts(&self) -> impl Iterator<Item = &Host> {
        std::iter::once(&self.server).chain(self.receivers.iter())
    }

    /// A command that runs `prog` inside `host`'s namespace.
    pub fn command(&self, host: &Host, prog: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &host.ns, prog]);
        c
    }

    /// Segments UDP GSO sends on the server's link, as a NIC puts them on a wire: the
    /// bridge, its loss rules and the receivers then see single packets, not batches of up
    /// to 64 that a loss rule would drop whole.
    pub fn segment_server_gso(&self) -> Result<()> {
        let s = &self.server;
        in_ns(
            &s.ns,
            &["ethtool", "-K", &s.iface, "tx-udp-segmentation", "off"],
        )
        .context("segment UDP GSO on the server link")
    }

    /// Caps the server's egress at `mbit` Mbit/s with a token bucket, as a LAN port of that
    /// speed does. The bucket holds 256 KiB, so a UDP GSO batch (up to 64 KiB) passes whole,
    /// and the queue 8 MiB: a sender outrunning the link with a smaller socket buffer (Light
    /// and UFTP ask for 4 MiB) is held back by it, or gets ENOBUFS, rather than losing
    /// packets in the queue.
    pub fn cap_server_link(&self, mbit: u32) -> Result<()> {
        let s = &self.server;
        in_ns(
            &s.ns,
            &[
                "tc",
                "qdisc",
                "replace",
                "dev",
                &s.iface,
                "root",
                "tbf",
                "rate",
                &format!("{mbit}mbit"),
                "burst",
                "256kb",
                "limit",
                "8mb",
            ],
        )
        .with_context(|| format!("cap the server link at {mbit} Mbit/s"))
    }

    /// Lifts the cap [`Testbed::cap_server_link`] set.
    pub fn uncap_server_link(&self) -> Result<()> {
        let s = &self.server;
        in_ns(&s.ns, &["tc", "qdisc", "del", "dev", &s.iface, "root"])
            .context("lift the server link's cap")
    }

    /// Waits up to `timeout` until the bridge forwards `group` to `receiver` (it has seen
    /// the receiver's IGMP/MLD join).
    pub fn wait_for_member(
        &self,
        receiver: usize,
        group: std::net::IpAddr,
        timeout: std::time::Duration,
    ) -> Result<()> {
        let port = &self.receivers[receiver].bridge_port;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let out = Command::new("bridge")
                .args(["-n", &self.bridge_ns, "mdb", "show", "dev", "br0"])
                .output()
                .context("bridge mdb show")?;
            let text = String::from_utf8_lossy(&out.stdout);
            if text.lines().any(|l| {
                l.split_whitespace()
                    .collect::<Vec<_>>()
                    .windows(2)
                    .any(|w| w == ["port", port.as_str()])
                    && l.split_whitespace().any(|w| w == group.to_string())
            }) {
                return Ok(());
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "the bridge never saw {port} join {group}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Drops `per_mille`/1000 of the UDP packets to `port` on their way to `receiver`,
    /// at random (an nftables bridge rule, before the receiver's XDP hook).
    pub fn set_loss(&self, receiver: usize, port: u16, per_mille: u32) -> Result<()> {
        self.drop_rule(
            receiver,
            port,
            &format!("numgen random mod 1000 < {per_mille}"),
        )
    }

    /// Drops bursts: `burst` consecutive packets out of every `period` to `port` on their
    /// way to `receiver`.
    pub fn set_burst_loss(
        &self,
        receiver: usize,
        port: u16,
        burst: u32,
        period: u32,
    ) -> Result<()> {
        self.drop_rule(
            receiver,
            port,
            &format!("numgen inc mod {period} < {burst}"),
        )
    }

    fn drop_rule(&self, receiver: usize, port: u16, select: &str) -> Result<()> {
        let h = &self.receivers[receiver];
        let br = &self.bridge_ns;
        in_ns(br, &["nft", "add table bridge lossy"])?;
        in_ns(
            br,
            &[
                "nft",
                "add chain bridge lossy fw { type filter hook forward priority 0; policy accept; }",
            ],
        )?;
        let rule = format!(
            "add rule bridge lossy fw oifname \"{}\" udp dport {port} {select} counter drop",
            h.bridge_port
        );
        in_ns(br, &["nft", &rule])
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veth ends and the bridge with it.
        for ns in self
            .hosts()
            .map(|h| h.ns.clone())
            .chain([self.bridge_ns.clone()])
        {
            let _ = Command::new("ip")
                .args(["netns", "del", &ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Moves the calling thread (only it) into namespace `ns`.
pub fn enter(ns: &str) -> Result<()> {
    let f =
        File::open(format!("/var/run/netns/{ns}")).with_context(|| format!("namespace {ns}"))?;
    // SAFETY: a valid namespace fd; CLONE_NEWNET switches only this thread's network namespace.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        bail!("setns({ns}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Fails unless running as root (namespaces, XDP and AF_XDP need it).
pub fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("this needs root (network namespaces, XDP); CI runs as root");
    }
    Ok(())
}
