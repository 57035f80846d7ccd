//! Proxy ARP (`arp_process` → `arp_fwd_proxy`, net/ipv4/arp.c): an interface answers an ARP
//! request for an address it does not own with its own MAC when
//!
//! * `proxy_arp` is on for it (`conf.all` OR `conf.IFACE`), or a proxy entry (`ip neigh add
//!   proxy ADDR dev IFACE`) names the address, and `conf.IFACE.medium_id` is not -1;
//! * the interface forwards (`conf.IFACE.forwarding`);
//! * the input route for the target from the requester (`ip_route_input(tip, sip, dev)`) is a
//!   unicast route leaving by *another* device;
//! * that input route passes `fib_validate_source` for the requester's address (rp_filter,
//!   local sources).
//!
//! This is how Calico's host veths answer the pods' 169.254.1.1 gateway.

use std::net::IpAddr;

use netray_snapshot::RouteType;

use crate::KernelObject;
use crate::fib::{self, FibResult, FlowKey};
use crate::world::{NsIdx, World};

use super::state::sysctl_or;

/// What an interface does with an ARP request for an address it does not own.
pub(super) enum ProxyArp {
    /// It answers, for the reason given.
    Answers(String),
    /// Everything but the proxy switch is in place: it would answer with `proxy_arp` on.
    Off {
        /// Why it stays silent.
        why: String,
        /// The objects that decide (the sysctls).
        by: Vec<KernelObject>,
    },
    /// It would proxy, but the requester's address fails the reverse-path check: the request
    /// is dropped (the sender never learns a MAC).
    SourceInvalid {
        /// Why.
        why: String,
        /// The objects that decide (route back, rp_filter sysctls).
        by: Vec<KernelObject>,
    },
    /// Not a proxy candidate (owns the address, no route, route back out the same device,
    /// not forwarding).
    No,
}

/// Interface `i` of namespace `n` receives an ARP request for `tip` from `sip`.
pub(super) fn check(w: &World<'_>, n: NsIdx, i: usize, tip: IpAddr, sip: IpAddr) -> ProxyArp {
    let v = &w.ns[n];
    let name = v.link_name(i);
    if !tip.is_ipv4() || v.owns(tip).is_some() {
        return ProxyArp::No;
    }
    let fwd_key = format!("net.ipv4.conf.{name}.forwarding");
    let fwd = v
        .sysctl_int(&fwd_key)
        .or_else(|| v.sysctl_int("net.ipv4.ip_forward"))
        .unwrap_or(0);
    if fwd == 0 {
        return ProxyArp::No;
    }
    let key = FlowKey {
        src: Some(sip),
        dst: tip,
        iif: Some(name),
        oif: None,
        mark: 0,
        tos: 0,
        proto: 0,
        sport: None,
        dport: None,
    };
    let FibResult::Route { route, .. } = fib::lookup(v, &key) else {
        return ProxyArp::No;
    };
    if route.route_type != RouteType::Unicast {
        return ProxyArp::No;
    }
    let out = route
        .dev
        .as_deref()
        .or_else(|| route.multipath.first().and_then(|m| m.dev.as_deref()))
        .unwrap_or("");
    if out == name {
        return ProxyArp::No;
    }
    let route_text = fib::route_text(route);
    // fib_validate_source for the requester, on the input route.
    if let Err((why, by)) = source_valid(w, n, i, sip, tip) {
        return ProxyArp::SourceInvalid {
            why: format!(
                "{name} in {} would proxy ARP for {tip} (route `{route_text}`), but the request's sender {sip} fails the source check: {why}",
                v.label()
            ),
            by,
        };
    }
    let all = sysctl_or(v, "net.ipv4.conf.all.proxy_arp", 0);
    let own = sysctl_or(v, &format!("net.ipv4.conf.{name}.proxy_arp"), 0);
    let medium = sysctl_or(v, &format!("net.ipv4.conf.{name}.medium_id"), 0);
    let pneigh = v
        .snap
        .neighbours
        .iter()
        .any(|e| e.dev == name && e.dst == tip && e.flags.iter().any(|f| f == "proxy"));
    if pneigh {
        return ProxyArp::Answers(format!(
            "proxy entry {tip} dev {name} (forwarding on; route `{route_text}`)"
        ));
    }
    if (all != 0 || own != 0) && medium != -1 {
        return ProxyArp::Answers(format!(
            "proxy_arp (all={all}, {name}={own}; route to {tip} is `{route_text}`, not back out {name})"
        ));
    }
    ProxyArp::Off {
        why: format!(
            "{name} in {} would answer for {tip} with proxy ARP (it forwards and routes {tip} by `{route_text}`), but proxy_arp is off (all={all}, {name}={own}{})",
            v.label(),
            if medium == -1 { ", medium_id=-1" } else { "" }
        ),
        by: vec![
            v.sysctl_obj(&format!("net.ipv4.conf.{name}.proxy_arp")),
            v.sysctl_obj("net.ipv4.conf.all.proxy_arp"),
        ],
    }
}

/// `fib_validate_source` for an ARP request's sender `sip` arriving on `i` for `tip`.
fn source_valid(
    w: &World<'_>,
    n: NsIdx,
    i: usize,
    sip: IpAddr,
    tip: IpAddr,
) -> Result<(), (String, Vec<KernelObject>)> {
    let v = &w.ns[n];
    let name = v.link_name(i);
    let conf = |k: &str| {
        (
            sysctl_or(v, &format!("net.ipv4.conf.all.{k}"), 0),
            sysctl_or(v, &format!("net.ipv4.conf.{name}.{k}"), 0),
        )
    };
    let (ra, ri) = conf("rp_filter");
    let rp = ra.max(ri);
    let (aa, ai) = conf("accept_local");
    let accept_local = aa != 0 || ai != 0;
    let rp_objs = || {
        vec![
            v.sysctl_obj(&format!("net.ipv4.conf.{name}.rp_filter")),
            v.sysctl_obj("net.ipv4.conf.all.rp_filter"),
        ]
    };
    if rp == 0 {
        if !accept_local && v.owns(sip).is_some() {
            return Err((
                format!("{sip} is a local address (accept_local=0)"),
                vec![v.sysctl_obj("net.ipv4.conf.all.accept_local")],
            ));
        }
        return Ok(());
    }
    let key = FlowKey {
        src: Some(tip),
        dst: sip,
        iif: None,
        oif: None,
        mark: 0,
        tos: 0,
        proto: 0,
        sport: None,
        dport: None,
    };
    match fib::lookup(v, &key) {
        FibResult::Route { route, .. } => {
            let text = fib::route_text(route);
            let obj = KernelObject::Route {
                at: v.place(),
                table: route.table,
                route: text.clone(),
                rule: None,
            };
            match route.route_type {
                RouteType::Local if accept_local => Ok(()),
                RouteType::Unicast => {
                    let via = route.dev.as_deref() == Some(name)
                        || route
                            .multipath
                            .iter()
                            .any(|m| m.dev.as_deref() == Some(name));
                    if rp == 1 && !via {
                        let mut by = rp_objs();
                        by.push(obj);
                        Err((
                            format!(
                                "rp_filter={rp} (all={ra}, {name}={ri}) and the route back to {sip} is `{text}`, not via {name}"
                            ),
                            by,
                        ))
                    } else {
                        Ok(())
                    }
                }
                _ => {
                    let mut by = vec![obj];
                    by.extend(rp_objs());
                    Err((
                        format!(
                            "rp_filter={rp} (all={ra}, {name}={ri}) and the route back to {sip} is `{text}` (not unicast)"
                        ),
                        by,
                    ))
                }
            }
        }
        _ => {
            let mut by = rp_objs();
            by.push(KernelObject::RouteLookup {
                at: v.place(),
                dst: sip,
                result: "no route back".into(),
                rule_priority: None,
            });
            Err((
                format!(
                    "rp_filter={rp} (all={ra}, {name}={ri}) and there is no route back to {sip}"
                ),
                by,
            ))
        }
    }
}
