//! The world: every namespace of every snapshot in a bundle, indexed once.
//!
//! Namespaces are identified by `(boot_id, inode)`: the same namespace seen from several node
//! snapshots (the lab's underlay switch) is one namespace here.

use std::collections::HashMap;
use std::net::IpAddr;

use netray_snapshot::{Bundle, LinkKind, NetnsRole, NetnsSnapshot, NodeSnapshot, Route};

/// Index of a namespace in [`World::ns`].
pub type NsIdx = usize;

/// One namespace with its indexes.
#[derive(Debug)]
pub struct NsView<'a> {
    /// Node name of the snapshot it was first seen in.
    pub node: &'a str,
    /// Boot id of that node (namespace identity).
    pub boot_id: &'a str,
    /// The snapshot data.
    pub snap: &'a NetnsSnapshot,
    /// True for a node's host namespace.
    pub is_host: bool,
    /// Link index by name.
    pub link_by_name: HashMap<&'a str, usize>,
    /// veth peer of each link (namespace, link index), when resolvable.
    pub peer: Vec<Option<(NsIdx, usize)>>,
    /// Routes of each table, most specific first, then by metric.
    pub tables: HashMap<u32, Vec<&'a Route>>,
    /// Policy rules sorted by priority (v4 and v6 together; filtered by family at lookup).
    pub rules: Vec<&'a netray_snapshot::Rule>,
    /// True when the snapshot listed sockets (an empty list then means "nothing listens").
    pub sockets_known: bool,
    /// IPVS virtual services (`ipvsadm -Sn`), when the snapshot has any.
    pub ipvs: Option<crate::ipvs::IpvsTable>,
}

impl<'a> NsView<'a> {
    /// Display name: `node/netns`.
    pub fn label(&self) -> String {
        format!("{}/{}", self.node, self.netns_label())
    }

    /// The namespace as reports name it: `host` for a node's host namespace (whatever it is
    /// called under /run/netns), else its `/run/netns` name or `netns:INODE`.
    pub fn netns_label(&self) -> String {
        if self.is_host {
            "host".to_string()
        } else {
            self.snap.display_name()
        }
    }

    /// Link by name.
    pub fn link(&self, name: &str) -> Option<usize> {
        self.link_by_name.get(name).copied()
    }

    /// Link name by index (empty for an out-of-range index).
    pub fn link_name(&self, i: usize) -> &'a str {
        self.snap
            .links
            .get(i)
            .map(|l| l.name.as_str())
            .unwrap_or("")
    }

    /// A sysctl as an integer (`None` when not collected or not an integer; see
    /// [`NsView::sysctl_unparsable`]).
    pub fn sysctl_int(&self, name: &str) -> Option<i64> {
        self.snap.sysctl(name).and_then(|v| v.trim().parse().ok())
    }

    /// The collected text of a sysctl that matters as an integer but is not one: the walk
    /// must not read it as 0.
    pub fn sysctl_unparsable(&self, name: &str) -> Option<&'a str> {
        self.snap
            .sysctl(name)
            .filter(|v| v.trim().parse::<i64>().is_err())
    }

    /// Where this namespace is, for [`crate::KernelObject`] references.
    pub fn place(&self) -> crate::Place {
        crate::Place {
            node: self.node.to_string(),
            netns: self.netns_label(),
        }
    }

    /// A reference to sysctl `key` as collected here.
    pub fn sysctl_obj(&self, key: &str) -> crate::KernelObject {
        crate::KernelObject::Sysctl {
            at: self.place(),
            key: netray_snapshot::sysctl_key(key),
            value: self.snap.sysctl(key).map(|v| v.trim().to_string()),
        }
    }

    /// A reference to link `i` with the state that matters.
    pub fn link_obj(&self, i: usize, state: impl Into<String>) -> crate::KernelObject {
        crate::KernelObject::Link {
            at: self.place(),
            name: self.link_name(i).to_string(),
            state: state.into(),
            mtu: self.snap.links.get(i).map(|l| l.mtu).filter(|m| *m > 0),
        }
    }

    /// Does this namespace own `ip` on some interface?
    pub fn owns(&self, ip: IpAddr) -> Option<usize> {
        self.snap
            .addresses
            .iter()
            .find(|a| a.addr.addr() == ip)
            .and_then(|a| self.link(&a.dev))
    }
}

/// The indexed bundle.
#[derive(Debug)]
pub struct World<'a> {
    /// The bundle.
    pub bundle: &'a Bundle,
    /// Every distinct namespace.
    pub ns: Vec<NsView<'a>>,
    /// Address → (namespace, link) owning it.
    pub owners: HashMap<IpAddr, Vec<(NsIdx, usize)>>,
    /// MAC (lowercase) → (namespace, link) having it.
    pub macs: HashMap<String, Vec<(NsIdx, usize)>>,
    /// The pod (`NS/NAME`) each pod namespace belongs to, when the cluster view says
    /// (see [`World::name_pods`]).
    pub pods: HashMap<NsIdx, String>,
    /// Nodes whose snapshot the bundle lacks (its failed list, and with
    /// [`World::set_missing_nodes`] every node the cluster view knows): a packet leaving the
    /// collected namespaces towards one of them ends `unknown`, naming it.
    pub missing: Vec<MissingNode>,
}

/// A node of the cluster whose snapshot is not in the bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingNode {
    /// Node name.
    pub name: String,
    /// Why its snapshot is missing.
    pub reason: String,
    /// Its own addresses and those of its pods, as far as known.
    pub addrs: Vec<IpAddr>,
    /// Its pod CIDRs, as far as known.
    pub pod_cidrs: Vec<ipnet::IpNet>,
}

impl MissingNode {
    /// Does `ip` belong to this node (one of its addresses, or in one of its pod CIDRs)?
    pub fn holds(&self, ip: IpAddr) -> bool {
        self.addrs.contains(&ip) || self.pod_cidrs.iter().any(|n| n.contains(&ip))
    }
}

impl<'a> World<'a> {
    /// Name the namespaces that belong to pods: each `(pod IP, "NS/NAME")` names the
    /// non-host namespace owning that address. Host-network pods name nothing.
    pub fn name_pods(&mut self, pods: impl IntoIterator<Item = (IpAddr, String)>) {
        for (ip, name) in pods {
            let owners: Vec<NsIdx> = self.owners_of(ip).iter().map(|o| o.0).collect();
            for ns in owners {
                if !self.ns[ns].is_host {
                    self.pods.insert(ns, name.clone());
                }
            }
        }
    }

    /// Say which nodes' snapshots are missing (replacing what [`World::new`] took from the
    /// bundle's failed list); nodes that do have a snapshot are ignored.
    pub fn set_missing_nodes(&mut self, nodes: impl IntoIterator<Item = MissingNode>) {
        let have: std::collections::HashSet<&str> = self
            .bundle
            .nodes
            .iter()
            .map(|n| n.node.name.as_str())
            .collect();
        self.missing = nodes
            .into_iter()
            .filter(|m| !have.contains(m.name.as_str()))
            .collect();
    }

    /// The missing node that `ip` belongs to, if any.
    pub fn missing_node_of(&self, ip: IpAddr) -> Option<&MissingNode> {
        self.missing.iter().find(|m| m.holds(ip))
    }

    /// The pod namespace `ns` belongs to, if named.
    pub fn pod_of(&self, ns: NsIdx) -> Option<&str> {
        self.pods.get(&ns).map(String::as_str)
    }

    /// Index a bundle. Never fails: odd data is left unresolved and reported by the walk.
    pub fn new(bundle: &'a Bundle) -> World<'a> {
        Self::with_nodes(bundle, &[])
    }

    /// Index `bundle` with the snapshots of some of its nodes replaced by `replaced` (matched
    /// by node name; a node of `replaced` that `bundle` lacks is ignored): a patched copy of
    /// a few nodes walks without copying the whole bundle. [`World::bundle`] stays `bundle`.
    pub fn with_nodes(bundle: &'a Bundle, replaced: &'a [NodeSnapshot]) -> World<'a> {
        let nodes = bundle.nodes.iter().map(|n| {
            replaced
                .iter()
                .find(|r| r.node.name == n.node.name)
                .unwrap_or(n)
        });
        let mut ns: Vec<NsView<'a>> = Vec::new();
        let mut by_key: HashMap<(&'a str, u64), NsIdx> = HashMap::new();
        for node in nodes {
            for snap in &node.namespaces {
                let key = (node.node.boot_id.as_str(), snap.id.inode);
                if let Some(&i) = by_key.get(&key) {
                    // Seen from another node: prefer the snapshot where it is the host.
                    if snap.role == NetnsRole::Host && !ns[i].is_host {
                        ns[i] = view(node, snap);
                    }
                    continue;
                }
                by_key.insert(key, ns.len());
                ns.push(view(node, snap));
            }
        }
        // veth peers.
        for i in 0..ns.len() {
            let boot = ns[i].boot_id;
            let mut peers = vec![None; ns[i].snap.links.len()];
            for (li, l) in ns[i].snap.links.iter().enumerate() {
                if let LinkKind::Veth {
                    peer_ifindex: Some(pi),
                    peer_netns,
                } = &l.kind
                {
                    let pns = match peer_netns {
                        Some(inode) => by_key.get(&(boot, *inode)).copied(),
                        None => Some(i),
                    };
                    if let Some(pns) = pns
                        && let Some(pl) = ns[pns].snap.links.iter().position(|x| x.ifindex == *pi)
                    {
                        peers[li] = Some((pns, pl));
                    }
                }
            }
            ns[i].peer = peers;
        }
        let mut owners: HashMap<IpAddr, Vec<(NsIdx, usize)>> = HashMap::new();
        let mut macs: HashMap<String, Vec<(NsIdx, usize)>> = HashMap::new();
        for (i, v) in ns.iter().enumerate() {
            for a in &v.snap.addresses {
                if let Some(li) = v.link(&a.dev) {
                    let ip = a.addr.addr();
                    if ip.is_loopback() {
                        continue;
                    }
                    owners.entry(ip).or_default().push((i, li));
                }
            }
            for (li, l) in v.snap.links.iter().enumerate() {
                if let Some(m) = &l.mac {
                    let m = m.to_ascii_lowercase();
                    if m != "00:00:00:00:00:00" {
                        macs.entry(m).or_default().push((i, li));
                    }
                }
            }
        }
        let missing = bundle
            .failed
            .iter()
            .map(|f| MissingNode {
                name: f.node.clone(),
                reason: format!("collection failed: {}", f.reason),
                addrs: Vec::new(),
                pod_cidrs: Vec::new(),
            })
            .collect();
        World {
            bundle,
            ns,
            owners,
            macs,
            pods: HashMap::new(),
            missing,
        }
    }

    /// Malformed `ipvsadm -Sn` lines per namespace (each evaluates as unknown in the walk).
    pub fn ipvs_diagnostics(&self) -> Vec<(NsIdx, String)> {
        let mut out = Vec::new();
        for (i, v) in self.ns.iter().enumerate() {
            if let Some(t) = &v.ipvs {
                out.extend(t.diagnostics.iter().map(|d| (i, d.to_string())));
            }
        }
        out
    }

    /// Namespaces owning `ip`.
    pub fn owners_of(&self, ip: IpAddr) -> &[(NsIdx, usize)] {
        self.owners.get(&ip).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Interfaces having `mac`.
    pub fn mac_owners(&self, mac: &str) -> &[(NsIdx, usize)] {
        self.macs
            .get(&mac.to_ascii_lowercase())
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The host namespace of node `name`.
    pub fn host_of(&self, name: &str) -> Option<NsIdx> {
        self.ns.iter().position(|v| v.is_host && v.node == name)
    }

    /// A namespace by `/run/netns` name, `netns:INODE` or inode.
    pub fn ns_by_name(&self, name: &str) -> Option<NsIdx> {
        self.ns.iter().position(|v| {
            v.snap.id.name.as_deref() == Some(name)
                || v.snap.display_name() == name
                || v.snap.id.inode.to_string() == name
        })
    }
}

fn view<'a>(node: &'a NodeSnapshot, snap: &'a NetnsSnapshot) -> NsView<'a> {
    let link_by_name = snap
        .links
        .iter()
        .enumerate()
        .map(|(i, l)| (l.name.as_str(), i))
        .collect();
    let mut tables: HashMap<u32, Vec<&'a Route>> = HashMap::new();
    for r in &snap.routes {
        tables.entry(r.table).or_default().push(r);
    }
    for t in tables.values_mut() {
        t.sort_by(|a, b| {
            b.dst
                .prefix_len()
                .cmp(&a.dst.prefix_len())
                .then(b.tos.cmp(&a.tos))
                .then(a.metric.cmp(&b.metric))
        });
    }
    let mut rules: Vec<_> = snap.rules.iter().collect();
    rules.sort_by_key(|r| r.priority);
    let sockets_known = !node
        .not_collected
        .iter()
        .any(|n| n.what == "sockets" && (n.netns.is_none() || n.netns == Some(snap.id.inode)));
    NsView {
        node: &node.node.name,
        boot_id: &node.node.boot_id,
        snap,
        is_host: snap.role == NetnsRole::Host,
        link_by_name,
        peer: Vec::new(),
        tables,
        rules,
        sockets_known,
        ipvs: snap
            .firewall
            .ipvs
            .as_deref()
            .filter(|t| !t.trim().is_empty())
            .map(crate::ipvs::IpvsTable::parse),
    }
}
