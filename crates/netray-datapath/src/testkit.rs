//! Small builders for hand-made snapshots and bundles, for tests (here, in the CLI and in
//! the diagnose layer). Routes, rules, neighbours and FDB entries are written in `ip` syntax.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use netray_snapshot::*;

/// A bundle under construction. Places are `NODE` (its host namespace) or `NODE:NETNS`.
#[derive(Debug, Default)]
pub struct Kit {
    /// Node snapshots.
    pub nodes: Vec<NodeSnapshot>,
    next_inode: u64,
    next_mac: u32,
}

fn empty_ns(inode: u64, name: Option<&str>, role: NetnsRole) -> NetnsSnapshot {
    let mut ns = NetnsSnapshot {
        id: NetnsId {
            inode,
            name: name.map(str::to_string),
            pids: Vec::new(),
        },
        role,
        links: vec![Link {
            ifindex: 1,
            name: "lo".into(),
            kind: LinkKind::Loopback,
            mtu: 65536,
            mac: None,
            operstate: "unknown".into(),
            flags: vec!["UP".into(), "LOOPBACK".into(), "LOWER_UP".into()],
            master: None,
            bridge_port: None,
            group: 0,
            stats: None,
        }],
        addresses: Vec::new(),
        routes: Vec::new(),
        rules: Vec::new(),
        neighbours: Vec::new(),
        fdb: Vec::new(),
        sysctls: BTreeMap::new(),
        firewall: Firewall::default(),
        conntrack: None,
        sockets: Vec::new(),
        attachments: Vec::new(),
    };
    add_addr(&mut ns, "lo", "127.0.0.1/8".parse().expect("static"));
    ns
}

fn add_addr(ns: &mut NetnsSnapshot, dev: &str, net: IpNet) {
    ns.addresses.push(Address {
        dev: dev.into(),
        addr: net,
        peer: None,
        scope: if net.addr().is_loopback() {
            "host"
        } else {
            "global"
        }
        .into(),
        flags: Vec::new(),
    });
    let local = Route {
        table: 255,
        dst: IpNet::new(net.addr(), if net.addr().is_ipv4() { 32 } else { 128 })
            .expect("host prefix"),
        src: None,
        route_type: RouteType::Local,
        protocol: "kernel".into(),
        scope: "host".into(),
        prefsrc: Some(net.addr()),
        metric: 0,
        tos: 0,
        gateway: None,
        dev: Some(dev.into()),
        flags: Vec::new(),
        multipath: Vec::new(),
        mtu: None,
    };
    ns.routes.push(local);
    if net.addr().is_loopback() {
        ns.routes.push(Route {
            dst: net.trunc(),
            ..ns.routes.last().cloned().expect("just pushed")
        });
        return;
    }
    if net.prefix_len() < if net.addr().is_ipv4() { 32 } else { 128 } {
        ns.routes.push(Route {
            table: 254,
            dst: net.trunc(),
            src: None,
            route_type: RouteType::Unicast,
            protocol: "kernel".into(),
            scope: "link".into(),
            prefsrc: Some(net.addr()),
            metric: 0,
            tos: 0,
            gateway: None,
            dev: Some(dev.into()),
            flags: Vec::new(),
            multipath: Vec::new(),
            mtu: None,
        });
    }
}

/// Parse `ip route` syntax: `[TYPE] DST [via GW] [dev DEV] [table T] [metric M] [src S]
/// [mtu M] [onlink] [nexthop via GW dev DEV weight W]...`.
pub fn parse_route(text: &str) -> Result<Route, String> {
    let mut w = text.split_whitespace().peekable();
    let mut rt = RouteType::Unicast;
    let first = w.next().ok_or("empty route")?;
    let dst_s = match first {
        "local" | "blackhole" | "unreachable" | "prohibit" | "throw" | "broadcast" => {
            rt = match first {
                "local" => RouteType::Local,
                "blackhole" => RouteType::Blackhole,
                "unreachable" => RouteType::Unreachable,
                "prohibit" => RouteType::Prohibit,
                "throw" => RouteType::Throw,
                _ => RouteType::Broadcast,
            };
            w.next().ok_or("missing destination")?
        }
        d => d,
    };
    let dst: IpNet = match dst_s {
        "default" => "0.0.0.0/0".parse().map_err(|e| format!("{e}"))?,
        d if d.contains('/') => d.parse().map_err(|e| format!("{d}: {e}"))?,
        d => {
            let a: IpAddr = d.parse().map_err(|e| format!("{d}: {e}"))?;
            IpNet::new(a, if a.is_ipv4() { 32 } else { 128 }).map_err(|e| e.to_string())?
        }
    };
    let mut r = Route {
        table: if rt == RouteType::Local { 255 } else { 254 },
        dst,
        src: None,
        route_type: rt,
        protocol: "static".into(),
        scope: "global".into(),
        prefsrc: None,
        metric: 0,
        tos: 0,
        gateway: None,
        dev: None,
        flags: Vec::new(),
        multipath: Vec::new(),
        mtu: None,
    };
    let ip = |s: Option<&str>| -> Result<IpAddr, String> {
        let s = s.ok_or("missing value")?;
        s.parse().map_err(|e| format!("{s}: {e}"))
    };
    let num = |s: Option<&str>| -> Result<u32, String> {
        let s = s.ok_or("missing value")?;
        s.parse().map_err(|e| format!("{s}: {e}"))
    };
    while let Some(k) = w.next() {
        match k {
            "via" => r.gateway = Some(ip(w.next())?),
            "dev" => r.dev = Some(w.next().ok_or("missing dev")?.to_string()),
            "table" => r.table = num(w.next())?,
            "metric" => r.metric = num(w.next())?,
            "src" => r.prefsrc = Some(ip(w.next())?),
            "mtu" => r.mtu = Some(num(w.next())?),
            "scope" => r.scope = w.next().ok_or("missing scope")?.to_string(),
            "onlink" => r.flags.push("onlink".into()),
            "nexthop" => {
                let mut nh = NextHop {
                    gateway: None,
                    dev: None,
                    weight: 1,
                    flags: Vec::new(),
                };
                while let Some(&k2) = w.peek() {
                    match k2 {
                        "via" => {
                            w.next();
                            nh.gateway = Some(ip(w.next())?);
                        }
                        "dev" => {
                            w.next();
                            nh.dev = Some(w.next().ok_or("missing dev")?.to_string());
                        }
                        "weight" => {
                            w.next();
                            nh.weight = num(w.next())?;
                        }
                        _ => break,
                    }
                }
                r.multipath.push(nh);
            }
            other => return Err(format!("unknown route keyword `{other}`")),
        }
    }
    Ok(r)
}

/// Parse `ip rule` syntax: `PRIO: [not] [from P] [to P] [iif D] [oif D] [fwmark M[/MASK]]
/// [ipproto N] [dport A[-B]] (lookup T | blackhole | unreachable | prohibit | goto N | nop)
/// [suppress_prefixlength N]`.
pub fn parse_rule(text: &str) -> Result<Rule, String> {
    let (prio, rest) = text.split_once(':').ok_or("missing `PRIO:`")?;
    let mut r = Rule {
        family: "inet".into(),
        priority: prio.trim().parse().map_err(|e| format!("{prio}: {e}"))?,
        invert: false,
        src: None,
        dst: None,
        iif: None,
        oif: None,
        fwmark: None,
        fwmask: None,
        tos: 0,
        ipproto: None,
        sport: None,
        dport: None,
        uid_range: None,
        l3mdev: false,
        action: RuleAction::Lookup,
        table: None,
        goto: None,
        suppress_prefixlen: None,
        suppress_ifgroup: None,
    };
    let mut w = rest.split_whitespace();
    let int = |s: &str| -> Result<u32, String> {
        match s.strip_prefix("0x") {
            Some(h) => u32::from_str_radix(h, 16).map_err(|e| format!("{s}: {e}")),
            None => s.parse().map_err(|e| format!("{s}: {e}")),
        }
    };
    let range = |s: &str| -> Result<(u16, u16), String> {
        let (a, b) = s.split_once('-').unwrap_or((s, s));
        Ok((
            a.parse().map_err(|e| format!("{a}: {e}"))?,
            b.parse().map_err(|e| format!("{b}: {e}"))?,
        ))
    };
    while let Some(k) = w.next() {
        let mut val = || w.next().ok_or_else(|| format!("missing value after {k}"));
        match k {
            "not" => r.invert = true,
            "from" => {
                let v = val()?;
                if v != "all" {
                    r.src = Some(v.parse().map_err(|e| format!("{v}: {e}"))?);
                }
            }
            "to" => {
                let v = val()?;
                r.dst = Some(v.parse().map_err(|e| format!("{v}: {e}"))?);
            }
            "iif" => r.iif = Some(val()?.to_string()),
            "oif" => r.oif = Some(val()?.to_string()),
            "fwmark" => {
                let v = val()?;
                let (m, k) = v.split_once('/').unwrap_or((v, "0xffffffff"));
                r.fwmark = Some(int(m)?);
                r.fwmask = Some(int(k)?);
            }
            "ipproto" => r.ipproto = Some(int(val()?)? as u8),
            "dport" => r.dport = Some(range(val()?)?),
            "sport" => r.sport = Some(range(val()?)?),
            "lookup" | "table" => {
                let v = val()?;
                r.table = Some(match v {
                    "local" => 255,
                    "main" => 254,
                    "default" => 253,
                    n => int(n)?,
                });
            }
            "blackhole" => r.action = RuleAction::Blackhole,
            "unreachable" => r.action = RuleAction::Unreachable,
            "prohibit" => r.action = RuleAction::Prohibit,
            "nop" => r.action = RuleAction::Nop,
            "goto" => {
                r.action = RuleAction::Goto;
                r.goto = Some(int(val()?)?);
            }
            "suppress_prefixlength" => r.suppress_prefixlen = Some(int(val()?)?),
            other => return Err(format!("unknown rule keyword `{other}`")),
        }
    }
    Ok(r)
}

impl Kit {
    /// An empty bundle.
    pub fn new() -> Kit {
        Kit {
            nodes: Vec::new(),
            next_inode: 4026531840,
            next_mac: 1,
        }
    }

    fn inode(&mut self) -> u64 {
        self.next_inode += 1;
        self.next_inode
    }

    /// A fresh locally administered MAC.
    pub fn mac(&mut self) -> String {
        self.next_mac += 1;
        let m = self.next_mac;
        format!("02:00:00:00:{:02x}:{:02x}", (m >> 8) & 0xff, m & 0xff)
    }

    /// Add a node (all nodes share one boot id, like the namespace lab).
    pub fn node(&mut self, name: &str) -> &mut Kit {
        let inode = self.inode();
        self.nodes.push(NodeSnapshot {
            schema_version: SCHEMA_VERSION,
            node: NodeIdentity {
                name: name.into(),
                hostname: name.into(),
                kernel: "6.18.0".into(),
                boot_id: "kit-boot".into(),
                collected_at: "2026-11-23T00:00:00Z".into(),
                collector: "netray testkit".into(),
            },
            namespaces: vec![empty_ns(inode, None, NetnsRole::Host)],
            referenced_netns: Vec::new(),
            not_collected: Vec::new(),
            cgroup_programs: Vec::new(),
        });
        self
    }

    /// Add a named namespace on `node`.
    pub fn netns(&mut self, node: &str, name: &str) -> &mut Kit {
        let inode = self.inode();
        if let Some(n) = self.nodes.iter_mut().find(|n| n.node.name == node) {
            n.namespaces
                .push(empty_ns(inode, Some(name), NetnsRole::VethPeer));
        }
        self
    }

    /// The namespace at `NODE` or `NODE:NETNS`. Panics on an unknown place (test input).
    pub fn ns(&mut self, at: &str) -> &mut NetnsSnapshot {
        let (node, ns) = at.split_once(':').map_or((at, None), |(a, b)| (a, Some(b)));
        let n = self
            .nodes
            .iter_mut()
            .find(|n| n.node.name == node)
            .unwrap_or_else(|| panic!("no node {node}"));
        n.namespaces
            .iter_mut()
            .find(|s| match ns {
                None => s.role == NetnsRole::Host,
                Some(x) => s.id.name.as_deref() == Some(x),
            })
            .unwrap_or_else(|| panic!("no namespace {at}"))
    }

    /// Add a link; returns its ifindex.
    pub fn link(&mut self, at: &str, name: &str, kind: LinkKind, mtu: u32) -> u32 {
        let mac = match kind {
            LinkKind::Loopback => None,
            _ => Some(self.mac()),
        };
        let ns = self.ns(at);
        let ifindex = ns.links.iter().map(|l| l.ifindex).max().unwrap_or(0) + 1;
        ns.links.push(Link {
            ifindex,
            name: name.into(),
            kind,
            mtu,
            mac,
            operstate: "up".into(),
            flags: vec!["UP".into(), "LOWER_UP".into()],
            master: None,
            bridge_port: None,
            group: 0,
            stats: None,
        });
        ifindex
    }

    /// A veth pair between two places (on different nodes too: the peer is then recorded in
    /// `referenced_netns`, as the collector does for a namespace shared by a lab).
    pub fn veth(&mut self, a: &str, a_name: &str, b: &str, b_name: &str) -> &mut Kit {
        let a_id = self.ns(a).id.clone();
        let b_id = self.ns(b).id.clone();
        let (a_inode, b_inode) = (a_id.inode, b_id.inode);
        let node_of = |p: &str| p.split(':').next().unwrap_or(p).to_string();
        if node_of(a) != node_of(b) {
            for (at, other) in [(node_of(a), b_id.clone()), (node_of(b), a_id.clone())] {
                if let Some(n) = self.nodes.iter_mut().find(|n| n.node.name == at)
                    && !n.referenced_netns.iter().any(|r| r.inode == other.inode)
                {
                    n.referenced_netns.push(other);
                }
            }
        }
        let ai = self.link(a, a_name, LinkKind::Device, 1500);
        let bi = self.link(b, b_name, LinkKind::Device, 1500);
        if let Some(l) = self.ns(a).links.iter_mut().find(|l| l.name == a_name) {
            l.kind = LinkKind::Veth {
                peer_ifindex: Some(bi),
                peer_netns: Some(b_inode),
            };
        }
        if let Some(l) = self.ns(b).links.iter_mut().find(|l| l.name == b_name) {
            l.kind = LinkKind::Veth {
                peer_ifindex: Some(ai),
                peer_netns: Some(a_inode),
            };
        }
        self
    }

    /// A bridge.
    pub fn bridge(&mut self, at: &str, name: &str) -> &mut Kit {
        self.link(
            at,
            name,
            LinkKind::Bridge {
                vlan_filtering: false,
                stp_state: 0,
                default_pvid: Some(1),
                nf_call_iptables: false,
                nf_call_ip6tables: false,
                nf_call_arptables: false,
            },
            1500,
        );
        self
    }

    /// Enslave `port` to bridge `br` (forwarding state, learning, hairpin as given).
    pub fn enslave(&mut self, at: &str, port: &str, br: &str, hairpin: bool) -> &mut Kit {
        let ns = self.ns(at);
        let mac = ns
            .links
            .iter()
            .find(|l| l.name == port)
            .and_then(|l| l.mac.clone());
        if let Some(l) = ns.links.iter_mut().find(|l| l.name == port) {
            l.master = Some(br.into());
            l.bridge_port = Some(BridgePort {
                state: "forwarding".into(),
                hairpin,
                learning: true,
                vlans: Vec::new(),
            });
        }
        if let Some(m) = mac {
            ns.fdb.push(FdbEntry {
                dev: port.into(),
                mac: m,
                master: Some(br.into()),
                vlan: None,
                dst: None,
                vni: None,
                port: None,
                state: vec!["permanent".into()],
                flags: Vec::new(),
            });
        }
        self
    }

    /// A VXLAN device.
    pub fn vxlan(
        &mut self,
        at: &str,
        name: &str,
        vni: u32,
        port: u16,
        local: &str,
        dev: &str,
    ) -> &mut Kit {
        self.link(
            at,
            name,
            LinkKind::Vxlan {
                vni,
                port,
                local: local.parse().ok(),
                group: None,
                dev: Some(dev.into()),
                learning: false,
            },
            1450,
        );
        self
    }

    /// An address (with its local and connected routes, as the kernel adds them).
    pub fn addr(&mut self, at: &str, dev: &str, cidr: &str) -> &mut Kit {
        let net: IpNet = cidr.parse().unwrap_or_else(|e| panic!("{cidr}: {e}"));
        add_addr(self.ns(at), dev, net);
        self
    }

    /// A route in `ip route` syntax.
    pub fn route(&mut self, at: &str, text: &str) -> &mut Kit {
        let r = parse_route(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        self.ns(at).routes.push(r);
        self
    }

    /// A policy rule in `ip rule` syntax; the first one added also adds the default rules.
    pub fn rule(&mut self, at: &str, text: &str) -> &mut Kit {
        let r = parse_rule(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        let ns = self.ns(at);
        if ns.rules.is_empty() {
            for d in [
                "0: from all lookup local",
                "32766: from all lookup main",
                "32767: from all lookup default",
            ] {
                ns.rules.push(parse_rule(d).expect("static"));
            }
        }
        ns.rules.push(r);
        self
    }

    /// A neighbour: `ADDR dev DEV [lladdr MAC] STATE`.
    pub fn neigh(&mut self, at: &str, text: &str) -> &mut Kit {
        let w: Vec<&str> = text.split_whitespace().collect();
        let mut n = Neighbour {
            dev: String::new(),
            dst: w[0].parse().unwrap_or_else(|e| panic!("{text}: {e}")),
            lladdr: None,
            state: Vec::new(),
            flags: Vec::new(),
        };
        let mut i = 1;
        while i < w.len() {
            match w[i] {
                "dev" => {
                    n.dev = w[i + 1].into();
                    i += 1;
                }
                "lladdr" => {
                    n.lladdr = Some(w[i + 1].into());
                    i += 1;
                }
                s => n.state.push(s.into()),
            }
            i += 1;
        }
        self.ns(at).neighbours.push(n);
        self
    }

    /// An FDB entry: `MAC dev DEV [dst IP] [master BR] [permanent]`.
    pub fn fdb(&mut self, at: &str, text: &str) -> &mut Kit {
        let w: Vec<&str> = text.split_whitespace().collect();
        let mut e = FdbEntry {
            dev: String::new(),
            mac: w[0].to_ascii_lowercase(),
            master: None,
            vlan: None,
            dst: None,
            vni: None,
            port: None,
            state: Vec::new(),
            flags: Vec::new(),
        };
        let mut i = 1;
        while i < w.len() {
            match w[i] {
                "dev" => {
                    e.dev = w[i + 1].into();
                    i += 1;
                }
                "dst" => {
                    e.dst = w[i + 1].parse().ok();
                    i += 1;
                }
                "master" => {
                    e.master = Some(w[i + 1].into());
                    i += 1;
                }
                s => e.state.push(s.into()),
            }
            i += 1;
        }
        self.ns(at).fdb.push(e);
        self
    }

    /// A sysctl.
    pub fn sysctl(&mut self, at: &str, key: &str, value: &str) -> &mut Kit {
        self.ns(at).sysctls.insert(key.into(), value.into());
        self
    }

    /// `iptables-save` text (legacy, v4).
    pub fn iptables(&mut self, at: &str, text: &str) -> &mut Kit {
        self.ns(at).firewall.iptables.push(IptablesDump {
            backend: IptablesBackend::Legacy,
            family: IpFamily::Ipv4,
            text: text.into(),
        });
        self
    }

    /// `ipset save` text.
    pub fn ipset(&mut self, at: &str, text: &str) -> &mut Kit {
        self.ns(at).firewall.ipset = Some(text.into());
        self
    }

    /// `ipvsadm -Sn` text.
    pub fn ipvs(&mut self, at: &str, text: &str) -> &mut Kit {
        self.ns(at).firewall.ipvs = Some(text.into());
        self
    }

    /// Set a link administratively down (like kube-proxy's `kube-ipvs0` dummy).
    pub fn down(&mut self, at: &str, dev: &str) -> &mut Kit {
        if let Some(l) = self.ns(at).links.iter_mut().find(|l| l.name == dev) {
            l.operstate = "down".into();
            l.flags.retain(|f| f != "UP" && f != "LOWER_UP");
        }
        self
    }

    /// A listening socket.
    pub fn listen(&mut self, at: &str, proto: SocketProto, addr: &str, port: u16) -> &mut Kit {
        let a = addr.parse().unwrap_or_else(|e| panic!("{addr}: {e}"));
        self.ns(at).sockets.push(Socket {
            proto,
            addr: a,
            port,
            dev: None,
            dual_stack: false,
        });
        self
    }

    /// MAC of a link.
    pub fn mac_of(&mut self, at: &str, dev: &str) -> String {
        self.ns(at)
            .links
            .iter()
            .find(|l| l.name == dev)
            .and_then(|l| l.mac.clone())
            .unwrap_or_default()
    }

    /// The bundle (snapshots validated like a loaded bundle).
    pub fn bundle(&self) -> Bundle {
        for n in &self.nodes {
            if let Err(e) = n.validate(&n.node.name) {
                panic!("testkit built an invalid snapshot: {e}");
            }
        }
        let mut nodes = self.nodes.clone();
        nodes.sort_by(|a, b| a.node.name.cmp(&b.node.name));
        Bundle {
            source: PathBuf::from("testkit"),
            cluster: None,
            nodes,
            failed: Vec::new(),
        }
    }
}
