//! `weir proxy init` in a network namespace the test creates: installs the capture rules,
//! re-running replaces them, `--cleanup` removes exactly them, `--dry-run` prints them.
//! Also checks the harness itself cleans up namespaces. Needs root.

mod support;

use std::process::Command;

use support::apps;
use support::netns::{ip, Netns, Topology, PREFIX};
use support::sidecar::WEIR;

fn weir_lines(ns: &Netns) -> Vec<String> {
    let out = ns.exec(&["iptables-save", "-t", "nat"]);
    assert!(
        out.status.success(),
        "iptables-save: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("WEIR_"))
        .map(|l| l.split(" [").next().unwrap_or(l).to_owned())
        .collect();
    v.sort();
    v
}

fn netns_names() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

#[test]
fn e2e_init_installs_replaces_and_cleans_up() {
    let topo = Topology::new(&["pod"]);
    let ns = &topo.pod("pod").netns;

    let dry = Command::new(WEIR)
        .args([
            "proxy",
            "init",
            "--dry-run",
            "--exclude-outbound-cidrs",
            "10.96.0.1/32",
        ])
        .output()
        .expect("run weir");
    assert!(
        dry.status.success(),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    let rules = String::from_utf8_lossy(&dry.stdout).into_owned();
    assert!(
        rules.starts_with("*nat\n:WEIR_INBOUND - [0:0]\n"),
        "{rules}"
    );
    assert!(
        rules.contains("-A WEIR_OUTPUT -m mark --mark 0x539 -j RETURN\n"),
        "{rules}"
    );
    assert!(
        rules.contains("-A WEIR_OUTPUT -d 10.96.0.1/32 -j RETURN\n"),
        "{rules}"
    );
    assert!(rules.ends_with("COMMIT\n"), "{rules}");
    let mut want: Vec<String> = rules
        .lines()
        .filter(|l| l.contains("WEIR_"))
        .map(|l| l.split(" [").next().unwrap_or(l).to_owned())
        .collect();
    want.sort();

    assert_eq!(weir_lines(ns), Vec::<String>::new());
    for _ in 0..2 {
        let out = ns.exec(&[
            WEIR,
            "proxy",
            "init",
            "--exclude-outbound-cidrs",
            "10.96.0.1/32",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(weir_lines(ns), want, "applied twice, still one copy");
    }
    let out = ns.exec(&[WEIR, "proxy", "init", "--cleanup"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(weir_lines(ns), Vec::<String>::new());

    // Bad flags are refused before anything is touched.
    let out = ns.exec(&[WEIR, "proxy", "init", "--proxy-mark", "0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("set --proxy-uid, --proxy-gid or --proxy-mark"),
        "{err}"
    );
    let out = ns.exec(&[
        WEIR,
        "proxy",
        "init",
        "--exclude-outbound-cidrs",
        "10.0.0.0/40",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--exclude-outbound-cidrs")
            && err.contains("invalid IPv4 CIDR \"10.0.0.0/40\""),
        "{err}"
    );
    assert_eq!(weir_lines(ns), Vec::<String>::new());
}

#[test]
fn e2e_harness_removes_namespaces_on_panic_and_stale_ones() {
    // A namespace of a process that no longer exists (pid above the kernel's maximum).
    let stale = format!("{PREFIX}99999999-0-stale");
    ip(&["netns", "add", &stale]);
    let prefix = std::panic::catch_unwind(|| {
        let topo = Topology::new(&["a", "b"]);
        assert!(
            !netns_names().contains(&stale),
            "stale namespace not removed"
        );
        let names = netns_names();
        for p in &topo.pods {
            assert!(names.contains(&p.netns.name().to_owned()));
        }
        // The pods reach each other over the bridge.
        let b = std::net::SocketAddr::from((topo.pod("b").ip, 7000));
        let server = apps::serve(&topo.pod("b").netns, b, 10, apps::Respond::Concurrently, 1);
        assert_eq!(apps::request(&topo.pod("a").netns, b, 20).received, 10);
        assert_eq!(server.join().unwrap()[0].received, 20);
        std::panic::panic_any(topo.prefix.clone());
    })
    .expect_err("the closure panics")
    .downcast::<String>()
    .expect("prefix");
    let left: Vec<String> = netns_names()
        .into_iter()
        .filter(|n| n.starts_with(&*prefix))
        .collect();
    assert_eq!(left, Vec::<String>::new());
}
