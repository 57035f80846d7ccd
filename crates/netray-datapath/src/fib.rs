//! Policy routing: rules by priority with every selector, tables, route types, longest prefix
//! then metric.

use std::net::IpAddr;
use std::sync::LazyLock;

use netray_snapshot::{Route, RouteType, Rule, RuleAction};

use crate::world::NsView;

/// What a route lookup is asked.
#[derive(Debug, Clone)]
pub struct FlowKey<'k> {
    /// Source address (output: as bound; input: as received).
    pub src: Option<IpAddr>,
    /// Destination.
    pub dst: IpAddr,
    /// Input interface; `None` for locally generated packets (rules then see `iif lo`).
    pub iif: Option<&'k str>,
    /// Output interface the socket is bound to, if any.
    pub oif: Option<&'k str>,
    /// Packet mark.
    pub mark: u32,
    /// TOS.
    pub tos: u8,
    /// IP protocol.
    pub proto: u8,
    /// Source port.
    pub sport: Option<u16>,
    /// Destination port.
    pub dport: Option<u16>,
}

/// The result of a lookup.
#[derive(Debug, Clone)]
pub enum FibResult<'a> {
    /// A route was found.
    Route {
        /// The rule that led to it (`None` when the namespace has no rules recorded).
        rule: Option<&'a Rule>,
        /// Table.
        table: u32,
        /// The route.
        route: &'a Route,
    },
    /// The destination is assumed on-link through the bound output interface.
    OnLink {
        /// Device.
        dev: &'a str,
    },
    /// A rule with a blackhole/unreachable/prohibit action matched.
    RuleAction {
        /// The rule.
        rule: &'a Rule,
    },
    /// Nothing matched.
    NoRoute,
}

fn default_rules(v6: bool) -> Vec<Rule> {
    [(0, 255), (32766, 254), (32767, 253)]
        .into_iter()
        .filter(|&(_, t)| !(v6 && t == 253))
        .map(|(p, t)| Rule {
            family: if v6 { "inet6" } else { "inet" }.into(),
            priority: p,
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
            table: Some(t),
            goto: None,
            suppress_prefixlen: None,
            suppress_ifgroup: None,
        })
        .collect()
}

static DEFAULT_V4: LazyLock<Vec<Rule>> = LazyLock::new(|| default_rules(false));
static DEFAULT_V6: LazyLock<Vec<Rule>> = LazyLock::new(|| default_rules(true));

fn family_matches(rule: &Rule, v6: bool) -> bool {
    match rule.family.as_str() {
        "inet" => !v6,
        "inet6" => v6,
        _ => true,
    }
}

fn in_range(p: Option<u16>, r: Option<(u16, u16)>) -> bool {
    match r {
        None => true,
        Some((lo, hi)) => p.is_some_and(|p| lo <= p && p <= hi),
    }
}

/// Does `rule`'s selector match `key`?
pub fn rule_matches(rule: &Rule, key: &FlowKey<'_>) -> bool {
    let iif = key.iif.unwrap_or("lo");
    let m = rule.iif.as_deref().is_none_or(|i| i == iif)
        && rule
            .oif
            .as_deref()
            .is_none_or(|o| key.iif.is_none() && key.oif == Some(o))
        && rule
            .src
            .is_none_or(|n| key.src.is_some_and(|s| n.contains(&s)) || n.prefix_len() == 0)
        && rule.dst.is_none_or(|n| n.contains(&key.dst))
        && rule.fwmark.is_none_or(|m| {
            let mask = rule.fwmask.unwrap_or(u32::MAX);
            (key.mark ^ m) & mask == 0
        })
        && (rule.tos == 0 || rule.tos == key.tos)
        && rule.ipproto.is_none_or(|p| p == key.proto)
        && in_range(key.sport, rule.sport)
        && in_range(key.dport, rule.dport)
        && rule.uid_range.is_none_or(|(lo, _)| lo == 0)
        && !rule.l3mdev;
    m != rule.invert
}

/// Look `dst` up in one table: longest prefix, then TOS, then lowest metric.
pub fn table_lookup<'a>(ns: &NsView<'a>, table: u32, key: &FlowKey<'_>) -> Option<&'a Route> {
    let routes = ns.tables.get(&table)?;
    routes.iter().copied().find(|r| {
        r.dst.contains(&key.dst)
            && (r.tos == 0 || r.tos == key.tos)
            && r.src
                .is_none_or(|s| key.src.is_some_and(|a| s.contains(&a)))
            && match key.oif {
                // A socket bound to a device only uses routes through it (local routes too).
                Some(o) if key.iif.is_none() && r.route_type == RouteType::Unicast => {
                    r.dev.as_deref() == Some(o)
                        || r.multipath.iter().any(|n| n.dev.as_deref() == Some(o))
                }
                _ => true,
            }
    })
}

/// Full policy-routing lookup.
pub fn lookup<'a>(ns: &NsView<'a>, key: &FlowKey<'_>) -> FibResult<'a> {
    let v6 = key.dst.is_ipv6();
    let own: Vec<&'a Rule> = ns
        .rules
        .iter()
        .copied()
        .filter(|r| family_matches(r, v6))
        .collect();
    let result = if own.is_empty() {
        let defaults: &'static [Rule] = if v6 { &DEFAULT_V6 } else { &DEFAULT_V4 };
        let refs: Vec<&'static Rule> = defaults.iter().collect();
        match walk_rules(ns, &refs, key) {
            FibResult::Route { table, route, .. } => FibResult::Route {
                rule: None,
                table,
                route,
            },
            FibResult::RuleAction { .. } | FibResult::NoRoute | FibResult::OnLink { .. } => {
                FibResult::NoRoute
            }
        }
    } else {
        walk_rules(ns, &own, key)
    };
    match (&result, key.oif) {
        (FibResult::NoRoute, Some(o)) if key.iif.is_none() => {
            // The kernel assumes the destination is on-link for a socket bound to a device.
            match ns.snap.links.iter().find(|l| l.name == o) {
                Some(l) => FibResult::OnLink { dev: &l.name },
                None => FibResult::NoRoute,
            }
        }
        _ => result,
    }
}

fn walk_rules<'a, 'r>(ns: &NsView<'a>, rules: &[&'r Rule], key: &FlowKey<'_>) -> FibResult<'a>
where
    'r: 'a,
{
    let mut i = 0;
    let mut steps = 0;
    while i < rules.len() && steps < 10_000 {
        steps += 1;
        let rule = rules[i];
        i += 1;
        if !rule_matches(rule, key) {
            continue;
        }
        match rule.action {
            RuleAction::Nop => {}
            RuleAction::Goto => {
                // fib_rules_lookup: the target is the first rule whose priority equals the
                // goto's (resolved when rules change); an unresolved goto — no rule has that
                // priority — is skipped like a nop (the kernel only lets a goto point forward).
                if let Some(target) = rule.goto
                    && let Some(p) = rules.iter().position(|r| r.priority == target)
                    && p >= i
                {
                    i = p;
                }
            }
            RuleAction::Blackhole | RuleAction::Unreachable | RuleAction::Prohibit => {
                return FibResult::RuleAction { rule };
            }
            RuleAction::Lookup => {
                let table = rule.table.unwrap_or(254);
                let Some(route) = table_lookup(ns, table, key) else {
                    continue;
                };
                if route.route_type == RouteType::Throw {
                    continue;
                }
                if let Some(s) = rule.suppress_prefixlen
                    && u32::from(route.dst.prefix_len()) <= s
                {
                    continue;
                }
                return FibResult::Route {
                    rule: Some(rule),
                    table,
                    route,
                };
            }
        }
    }
    FibResult::NoRoute
}

/// `ip route` style text of a route.
pub fn route_text(r: &Route) -> String {
    let mut s = String::new();
    if r.route_type != RouteType::Unicast {
        s.push_str(&format!("{:?} ", r.route_type).to_lowercase());
    }
    if r.dst.prefix_len() == 0 {
        s.push_str("default");
    } else if (r.dst.addr().is_ipv4() && r.dst.prefix_len() == 32) || r.dst.prefix_len() == 128 {
        s.push_str(&r.dst.addr().to_string());
    } else {
        s.push_str(&r.dst.to_string());
    }
    if let Some(g) = r.gateway {
        s.push_str(&format!(" via {g}"));
    }
    if let Some(d) = &r.dev {
        s.push_str(&format!(" dev {d}"));
    }
    if r.gateway.is_some() && r.flags.iter().any(|f| f == "onlink") {
        s.push_str(" onlink");
    }
    for nh in &r.multipath {
        s.push_str(" nexthop");
        if let Some(g) = nh.gateway {
            s.push_str(&format!(" via {g}"));
        }
        if let Some(d) = &nh.dev {
            s.push_str(&format!(" dev {d}"));
        }
        s.push_str(&format!(" weight {}", nh.weight));
    }
    if r.scope != "global" && r.scope != "universe" && !r.scope.is_empty() {
        s.push_str(&format!(" scope {}", r.scope));
    }
    if let Some(p) = r.prefsrc {
        s.push_str(&format!(" src {p}"));
    }
    if r.metric != 0 {
        s.push_str(&format!(" metric {}", r.metric));
    }
    match r.table {
        254 => {}
        255 => s.push_str(" table local"),
        253 => s.push_str(" table default"),
        t => s.push_str(&format!(" table {t}")),
    }
    s
}

/// `ip rule` style text of a rule.
pub fn rule_text(r: &Rule) -> String {
    let mut s = format!("{}:", r.priority);
    if r.invert {
        s.push_str(" not");
    }
    match r.src {
        Some(n) if n.prefix_len() > 0 => s.push_str(&format!(" from {n}")),
        _ => s.push_str(" from all"),
    }
    if let Some(d) = r.dst {
        s.push_str(&format!(" to {d}"));
    }
    if let Some(m) = r.fwmark {
        s.push_str(&format!(" fwmark {m:#x}"));
        if let Some(k) = r.fwmask
            && k != u32::MAX
        {
            s.push_str(&format!("/{k:#x}"));
        }
    }
    if let Some(i) = &r.iif {
        s.push_str(&format!(" iif {i}"));
    }
    if let Some(o) = &r.oif {
        s.push_str(&format!(" oif {o}"));
    }
    if let Some(p) = r.ipproto {
        s.push_str(&format!(" ipproto {p}"));
    }
    if let Some((a, b)) = r.dport {
        s.push_str(&format!(" dport {a}-{b}"));
    }
    match r.action {
        RuleAction::Lookup => {
            let t = r.table.unwrap_or(254);
            match t {
                255 => s.push_str(" lookup local"),
                254 => s.push_str(" lookup main"),
                253 => s.push_str(" lookup default"),
                t => s.push_str(&format!(" lookup {t}")),
            }
        }
        RuleAction::Goto => s.push_str(&format!(" goto {}", r.goto.unwrap_or(0))),
        RuleAction::Nop => s.push_str(" nop"),
        RuleAction::Blackhole => s.push_str(" blackhole"),
        RuleAction::Unreachable => s.push_str(" unreachable"),
        RuleAction::Prohibit => s.push_str(" prohibit"),
    }
    if let Some(p) = r.suppress_prefixlen {
        s.push_str(&format!(" suppress_prefixlength {p}"));
    }
    s
}
