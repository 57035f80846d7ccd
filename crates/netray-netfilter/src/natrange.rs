//! Which address and port a NAT range gives a new connection, as `nf_nat_core.c` picks them
//! (`get_unique_tuple`, `find_best_ips_proto`, `nf_nat_l4proto_unique_tuple`):
//!
//! * **Address range** (IPv4): a hash of the original source and destination addresses —
//!   `jhash2(src, 4 words, dst ^ zone)`, or initval 0 with `--persistent` — scaled into the
//!   range. No random seed is involved: the same client always gets the same address, and it
//!   can be computed. For SNAT a source already inside the range is kept.
//! * **Destination port range**: kept when the original port lies in the range, else the
//!   first port of the range; with `--random` / `--random-fully` the kernel starts from a
//!   random offset, so the port is unpredictable: every port of the range is a branch of
//!   equal weight (up to [`MAX_RANDOM_PORTS`]; beyond that the choice is reported unknown).
//!
//! Not modelled: clashes with other existing connections (the kernel then moves to the next
//! free port or address), IPv6 address ranges (reported unknown), and source-port choice for
//! SNAT (the port is only rewritten, as before).

use std::net::IpAddr;

use crate::{AddrRange, NatAction, PortRange};

/// Most ports a `--random` destination range is split into as branches.
pub const MAX_RANDOM_PORTS: u32 = 16;

fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(4);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(6);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(8);
    *b = b.wrapping_add(*a);
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(16);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(19);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(4);
    *b = b.wrapping_add(*a);
}

fn fin(a: &mut u32, b: &mut u32, c: &mut u32) {
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(14));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(11));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(25));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(16));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(4));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(14));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(24));
}

/// The kernel's `jhash2` (lookup3) over `k`.
pub fn jhash2(k: &[u32], initval: u32) -> u32 {
    let init = 0xdead_beef_u32
        .wrapping_add((k.len() as u32) << 2)
        .wrapping_add(initval);
    let (mut a, mut b, mut c) = (init, init, init);
    let mut k = k;
    while k.len() > 3 {
        a = a.wrapping_add(k[0]);
        b = b.wrapping_add(k[1]);
        c = c.wrapping_add(k[2]);
        mix(&mut a, &mut b, &mut c);
        k = &k[3..];
    }
    match k.len() {
        3 => {
            c = c.wrapping_add(k[2]);
            b = b.wrapping_add(k[1]);
            a = a.wrapping_add(k[0]);
            fin(&mut a, &mut b, &mut c);
        }
        2 => {
            b = b.wrapping_add(k[1]);
            a = a.wrapping_add(k[0]);
            fin(&mut a, &mut b, &mut c);
        }
        1 => {
            a = a.wrapping_add(k[0]);
            fin(&mut a, &mut b, &mut c);
        }
        _ => {}
    }
    c
}

/// An IPv4 address as the kernel holds it in a `__be32`, read as a u32 on a little-endian
/// host (x86-64, arm64).
fn raw(ip: std::net::Ipv4Addr) -> u32 {
    u32::from_le_bytes(ip.octets())
}

/// `find_best_ips_proto` for IPv4: the address of `range` that connection `src` → `dst`
/// gets. `None` for IPv6 ranges (not modelled).
pub fn range_address(
    range: AddrRange,
    src: IpAddr,
    dst: IpAddr,
    zone: u16,
    persistent: bool,
) -> Option<IpAddr> {
    if range.lo == range.hi {
        return Some(range.lo);
    }
    let (IpAddr::V4(lo), IpAddr::V4(hi), IpAddr::V4(s), IpAddr::V4(d)) =
        (range.lo, range.hi, src, dst)
    else {
        return None;
    };
    let init = if persistent {
        0
    } else {
        raw(d) ^ u32::from(zone)
    };
    let j = jhash2(&[raw(s), 0, 0, 0], init);
    let (min, max) = (u32::from(lo), u32::from(hi));
    let dist = max.wrapping_sub(min).wrapping_add(1);
    let off = ((u64::from(j) * u64::from(dist)) >> 32) as u32;
    Some(IpAddr::V4(std::net::Ipv4Addr::from(min.wrapping_add(off))))
}

/// The concrete choices a NAT action gives the connection `src:sport` → `dst:dport` (in
/// conntrack zone `zone`), with their weights (summing to 1): one for a deterministic choice,
/// several for a `--random` destination port range. `Err` says why the choice cannot be
/// predicted.
pub fn choose(
    a: &NatAction,
    src: IpAddr,
    dst: IpAddr,
    sport: Option<u16>,
    dport: Option<u16>,
    zone: u16,
) -> Result<Vec<(f64, NatAction)>, String> {
    let one = |ip: IpAddr| Some(AddrRange { lo: ip, hi: ip });
    match a {
        NatAction::Dnat {
            addr,
            ports,
            random,
            persistent,
        } => {
            let addr = match addr {
                Some(r) => Some(range_address(*r, src, dst, zone, *persistent).ok_or_else(
                    || format!(
                        "DNAT to the address range {}-{}: which address the kernel picks is not modelled for IPv6",
                        r.lo, r.hi
                    ),
                )?),
                None => None,
            };
            let mk = |port: Option<u16>| NatAction::Dnat {
                addr: addr.and_then(one),
                ports: port.map(PortRange::one).or(*ports),
                random: *random,
                persistent: *persistent,
            };
            match (ports, dport) {
                (Some(p), Some(d)) if p.lo != p.hi => {
                    if *random {
                        let n = u32::from(p.hi) - u32::from(p.lo) + 1;
                        if n > MAX_RANDOM_PORTS {
                            return Err(format!(
                                "DNAT --random to ports {}-{}: the kernel picks one of {n} ports at random; which backend port is unpredictable",
                                p.lo, p.hi
                            ));
                        }
                        let w = 1.0 / f64::from(n);
                        Ok((p.lo..=p.hi).map(|q| (w, mk(Some(q)))).collect())
                    } else if (p.lo..=p.hi).contains(&d) {
                        Ok(vec![(1.0, mk(Some(d)))])
                    } else {
                        Ok(vec![(1.0, mk(Some(p.lo)))])
                    }
                }
                _ => Ok(vec![(1.0, mk(None))]),
            }
        }
        NatAction::Snat {
            addr: Some(r),
            ports,
            random,
            random_fully,
            persistent,
        } if r.lo != r.hi => {
            let inside = match (r.lo, r.hi, src) {
                (IpAddr::V4(lo), IpAddr::V4(hi), IpAddr::V4(s)) => {
                    (u32::from(lo)..=u32::from(hi)).contains(&u32::from(s))
                        && ports.is_none_or(|p| sport.is_some_and(|sp| p.contains(sp)))
                }
                _ => false,
            };
            let ip = if inside && !random && !random_fully {
                src
            } else {
                range_address(*r, src, dst, zone, *persistent).ok_or_else(|| {
                    format!(
                        "SNAT to the address range {}-{}: which address the kernel picks is not modelled for IPv6",
                        r.lo, r.hi
                    )
                })?
            };
            Ok(vec![(
                1.0,
                NatAction::Snat {
                    addr: one(ip),
                    ports: *ports,
                    random: *random,
                    random_fully: *random_fully,
                    persistent: *persistent,
                },
            )])
        }
        other => Ok(vec![(1.0, other.clone())]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn address_choice_is_the_kernels() {
        // Measured in tests/fidelity_lab.rs (dnat_address_range): 10.0.1.2 → .3, 10.0.1.3 → .2.
        let r = AddrRange {
            lo: ip("10.0.2.2"),
            hi: ip("10.0.2.3"),
        };
        let pick = |s| range_address(r, ip(s), ip("10.0.9.9"), 0, false).unwrap();
        assert_eq!(pick("10.0.1.2"), ip("10.0.2.3"));
        assert_eq!(pick("10.0.1.3"), ip("10.0.2.2"));
    }

    #[test]
    fn ports_first_kept_or_random() {
        let dnat = |random| NatAction::Dnat {
            addr: None,
            ports: Some(PortRange { lo: 8080, hi: 8081 }),
            random,
            persistent: false,
        };
        let port = |c: &[(f64, NatAction)]| -> Vec<u16> {
            c.iter()
                .map(|(_, a)| match a {
                    NatAction::Dnat { ports: Some(p), .. } => p.lo,
                    _ => 0,
                })
                .collect()
        };
        let (s, d) = (ip("10.0.1.2"), ip("10.0.9.9"));
        let c = choose(&dnat(false), s, d, Some(40000), Some(80), 0).unwrap();
        assert_eq!(port(&c), [8080]);
        let c = choose(&dnat(false), s, d, Some(40000), Some(8081), 0).unwrap();
        assert_eq!(port(&c), [8081]);
        let c = choose(&dnat(true), s, d, Some(40000), Some(80), 0).unwrap();
        assert_eq!(port(&c), [8080, 8081]);
        let wide = NatAction::Dnat {
            addr: None,
            ports: Some(PortRange { lo: 1000, hi: 2000 }),
            random: true,
            persistent: false,
        };
        assert!(choose(&wide, s, d, None, Some(80), 0).is_err());
    }
}
