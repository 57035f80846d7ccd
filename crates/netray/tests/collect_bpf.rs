//! `netray collect` records what runs on interfaces that netray does not model: a tc `bpf`
//! filter (clsact ingress and egress, and the old `ingress` qdisc) and an XDP program, each
//! with the kernel's program id and name. The BPF object is built here from LLVM IR with
//! `llc` (no clang on these machines); the test is skipped without `llc`.

mod collect_lab;

use collect_lab::{have, root_or_skip};
use netray_lab::{Netns, lab_tag};

/// `tc` returns TC_ACT_OK, `xdp` returns XDP_PASS: attached, they change no packet.
const PROG_LL: &str = r#"target datalayout = "e-m:e-p:64:64-i64:64-i128:128-n32:64-S128"
target triple = "bpf"

define dso_local i32 @nrx_tc(i8* nocapture readnone %skb) #0 section "tc" {
  ret i32 0
}

define dso_local i32 @nrx_xdp(i8* nocapture readnone %ctx) #0 section "xdp" {
  ret i32 2
}

@_license = dso_local global [4 x i8] c"GPL\00", section "license", align 1
@llvm.used = appending global [3 x i8*] [i8* getelementptr inbounds ([4 x i8], [4 x i8]* @_license, i32 0, i32 0), i8* bitcast (i32 (i8*)* @nrx_tc to i8*), i8* bitcast (i32 (i8*)* @nrx_xdp to i8*)], section "llvm.metadata"

attributes #0 = { nounwind }
"#;

#[test]
fn tc_and_xdp_programs_are_collected() {
    if !root_or_skip("tc_and_xdp_programs_are_collected") {
        return;
    }
    if !have("llc") {
        // Under CI the lab tests must run: .ci/apt-packages installs llvm (llc).
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "no llc to build a BPF object (install llvm; .ci/apt-packages lists it)"
        );
        eprintln!("skipping: no llc to build a BPF object (install llvm)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("netray-bpf-{}", lab_tag()));
    std::fs::create_dir_all(&dir).unwrap();
    let ll = dir.join("prog.ll");
    let obj = dir.join("prog.o");
    std::fs::write(&ll, PROG_LL).unwrap();
    let st = std::process::Command::new("llc")
        .args(["-march=bpf", "-filetype=obj", "-o"])
        .arg(&obj)
        .arg(&ll)
        .status()
        .unwrap();
    assert!(st.success(), "llc failed");
    let node = Netns::create(&format!("bpf{}", lab_tag())).unwrap();
    let o = obj.display();
    let setup = format!(
        "ip link add va type veth peer name vb && ip link set va up && ip link set vb up && \
         tc qdisc add dev va clsact && \
         tc filter add dev va ingress bpf da obj {o} sec tc && \
         tc filter add dev va egress bpf da obj {o} sec tc && \
         tc qdisc add dev vb ingress && \
         tc filter add dev vb ingress bpf da obj {o} sec tc && \
         ip link set dev vb xdpgeneric obj {o} sec xdp"
    );
    if let Err(e) = node.sh(&setup) {
        let _ = std::fs::remove_dir_all(&dir);
        panic!("attaching the programs failed: {e}");
    }
    let snap = collect_lab::collect(&node, &[]);
    let _ = std::fs::remove_dir_all(&dir);
    let host = &snap["namespaces"][0];
    let att = host["attachments"].as_array().expect("attachments");
    let find = |point: &str, dev: &str| {
        att.iter()
            .find(|a| a["point"] == point && a["dev"] == dev)
            .unwrap_or_else(|| panic!("no {point} on {dev}: {att:#?}"))
    };
    for (point, dev) in [
        ("tc-ingress", "va"),
        ("tc-egress", "va"),
        ("tc-ingress", "vb"),
    ] {
        let a = find(point, dev);
        assert_eq!(a["kind"], "bpf", "{a}");
        assert_eq!(a["direct_action"], true, "{a}");
        assert_eq!(a["prog"]["name"], "nrx_tc", "{a}");
        assert!(a["prog"]["id"].as_u64().unwrap() > 0, "{a}");
        assert_eq!(a["pref"], 49152, "{a}");
    }
    let x = find("xdp", "vb");
    assert_eq!(x["mode"], "generic", "{x}");
    assert_eq!(x["prog"]["name"], "nrx_xdp", "{x}");
    assert_eq!(att.len(), 4, "{att:#?}");
}
