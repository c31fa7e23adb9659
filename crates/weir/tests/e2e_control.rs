//! The control plane end to end, in network namespaces: `weir control serve` computes each
//! sidecar's configuration from Istio's YAML and pushes it over mutual TLS; sidecars
//! (`weir proxy --control-plane`) route by it. Istio's TCP traffic shifting (all to v1,
//! then 80/20), a long-lived connection that keeps its route across changes, and the
//! control plane killed and restarted while the proxies keep serving. Needs root.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use support::http::eventually;
use support::netns::Netns;
use support::process::ChildGuard;
use support::sidecar::{Env, Sidecar, Workload, WEIR};

const PORT: u16 = 9000;
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);

const SLEEP: Workload = Workload {
    name: "sleep",
    app: "sleep",
    version: "v1",
    sa: "sleep",
    namespace: "default",
};
const ECHO_V1: Workload = Workload {
    name: "tcp-echo-v1",
    app: "tcp-echo",
    version: "v1",
    sa: "default",
    namespace: "default",
};
const ECHO_V2: Workload = Workload {
    name: "tcp-echo-v2",
    app: "tcp-echo",
    version: "v2",
    sa: "default",
    namespace: "default",
};

/// Istio's tcp-echo service and its subsets, with a fixed cluster IP.
const SERVICE: &str = "apiVersion: v1
kind: Service
metadata:
  name: tcp-echo
  labels:
    app: tcp-echo
spec:
  clusterIP: 10.96.0.30
  ports:
  - name: tcp
    port: 9000
  selector:
    app: tcp-echo
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: tcp-echo-destination
spec:
  host: tcp-echo
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
";

fn routes(v1: u32, v2: u32) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: tcp-echo
spec:
  hosts:
  - tcp-echo
  tcp:
  - match:
    - port: 9000
    route:
    - destination:
        host: tcp-echo
        port:
          number: 9000
        subset: v1
      weight: {v1}
    - destination:
        host: tcp-echo
        port:
          number: 9000
        subset: v2
      weight: {v2}
"
    )
}

/// A tcp-echo app: says its name on a line, then echoes.
fn echo_server(netns: &Netns, name: &'static str) {
    let (tx, rx) = std::sync::mpsc::channel();
    netns.spawn(move || {
        let listener = TcpListener::bind(("0.0.0.0", PORT)).expect("bind echo");
        tx.send(()).expect("signal bound");
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                if stream.write_all(format!("{name}\n").as_bytes()).is_err() {
                    return;
                }
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("echo server bound");
}

/// One connection from the client pod to the service: which version answered.
fn ask(netns: &Netns) -> Result<String, String> {
    netns.run(|| {
        let addr = SocketAddr::from((VIP, PORT));
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        BufReader::new(stream)
            .read_line(&mut line)
            .map_err(|e| format!("read: {e}"))?;
        match line.trim() {
            "" => Err("closed without a greeting".to_owned()),
            who => Ok(who.to_owned()),
        }
    })
}

/// How many of `n` connections each version answered.
fn split(netns: &Netns, n: usize) -> (usize, usize) {
    let mut counts = (0, 0);
    for i in 0..n {
        match ask(netns) {
            Ok(who) if who == "v1" => counts.0 += 1,
            Ok(who) if who == "v2" => counts.1 += 1,
            other => panic!("connection {i}: {other:?}"),
        }
    }
    counts
}

struct ControlPlane {
    child: ChildGuard,
}

impl ControlPlane {
    fn start(env: &Env, state: &Path, cacerts: &Path) -> Self {
        let mut child = env.spawn(
            "control",
            Some("control"),
            &[
                WEIR,
                "control",
                "serve",
                "--state-dir",
                &state.to_string_lossy(),
                "--cacerts",
                &cacerts.to_string_lossy(),
            ],
        );
        eventually("control plane listening", Duration::from_secs(30), || {
            child.assert_running();
            if child.stdout().contains("gRPC on") {
                Ok(())
            } else {
                Err(child.stderr())
            }
        });
        Self { child }
    }

    fn apply(&self, env: &Env, name: &str, yaml: &str) {
        let path = env.path(name);
        std::fs::write(&path, yaml).expect("write manifest");
        let out = env
            .pod("control")
            .netns
            .exec(&[WEIR, "apply", "-f", &path.to_string_lossy()]);
        assert!(
            out.status.success(),
            "weir apply {name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Polls until `n` connections in a row are all answered by `want`.
fn converge(netns: &Netns, want: &str, what: &str) {
    eventually(what, Duration::from_secs(30), || {
        for _ in 0..10 {
            match ask(netns) {
                Ok(who) if who == want => {}
                other => return Err(format!("{other:?}")),
            }
        }
        Ok(())
    });
}

#[test]
fn traffic_shifting_follows_the_control_plane_and_survives_its_restart() {
    let env = Env::new(&["control", "client", "echo-v1", "echo-v2"]);
    let cacerts = env.path("cacerts");
    env.ca.write_plugin_dir(&cacerts).expect("write cacerts");
    let state = env.path("control-state");
    let mut control = ControlPlane::start(&env, &state, &cacerts);
    control.apply(&env, "tcp-echo.yaml", SERVICE);
    control.apply(&env, "all-v1.yaml", &routes(100, 0));

    let cp = format!("{}:15012", env.pod("control").ip);
    let follow = ["--control-plane", cp.as_str()];
    echo_server(&env.pod("echo-v1").netns, "v1");
    echo_server(&env.pod("echo-v2").netns, "v2");
    let _v1 = Sidecar::start_args(&env, "echo-v1", &ECHO_V1, &follow, |_| {});
    let _v2 = Sidecar::start_args(&env, "echo-v2", &ECHO_V2, &follow, |_| {});
    let _client = Sidecar::start_args(&env, "client", &SLEEP, &follow, |_| {});
    let client = &env.pod("client").netns;

    // All to v1 (tcp-echo-all-v1).
    converge(client, "v1", "every connection on v1");
    let (v1, v2) = split(client, 50);
    assert_eq!((v1, v2), (50, 0));

    // A long-lived connection, opened on v1, must keep its route through every change.
    let mut long = client.run(|| {
        let s = TcpStream::connect_timeout(&SocketAddr::from((VIP, PORT)), Duration::from_secs(3))
            .expect("long-lived connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    });
    let mut greeting = [0u8; 3];
    long.read_exact(&mut greeting).expect("greeting");
    assert_eq!(&greeting, b"v1\n");
    let round_trip = |long: &mut TcpStream, text: &[u8]| {
        long.write_all(text).expect("long-lived write");
        let mut back = vec![0u8; text.len()];
        long.read_exact(&mut back).expect("long-lived read");
        assert_eq!(back, text);
    };
    round_trip(&mut long, b"before the shift");

    // 80/20 (tcp-echo-20-v2): 500 connections. With p = 0.2 the v2 count has mean 100
    // and sigma ~8.9; 5 sigma either side makes a false failure practically impossible.
    control.apply(&env, "20-v2.yaml", &routes(80, 20));
    eventually(
        "a v2 answer after the shift",
        Duration::from_secs(30),
        || match ask(client) {
            Ok(who) if who == "v2" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    let (v1, v2) = split(client, 500);
    assert_eq!(v1 + v2, 500);
    assert!(
        (55..=145).contains(&v2),
        "v2 got {v2} of 500, want 100 ± 45"
    );
    round_trip(&mut long, b"after the shift");

    // The control plane dies: the proxies keep their last good configuration.
    control.child.signal(Signal::SIGKILL);
    control.child.wait_timeout(Duration::from_secs(10));
    let (v1, v2) = split(client, 40);
    assert_eq!(v1 + v2, 40);
    assert!(
        v1 > 0 && v2 > 0,
        "still split 80/20 without the control plane: {v1}/{v2}"
    );
    round_trip(&mut long, b"control plane away");

    // Back, from its state directory; a new change reaches the reconnected proxies.
    let control = ControlPlane::start(&env, &state, &cacerts);
    control.apply(&env, "all-v2.yaml", &routes(0, 100));
    converge(client, "v2", "every connection on v2 after the restart");
    round_trip(&mut long, b"after the restart");
}
