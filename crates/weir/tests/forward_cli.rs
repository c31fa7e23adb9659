//! `weir-proxy forward`: a metered TCP hop on one worker thread or several, a bad
//! `--concurrency` named in the error, and glibc's copy tunable on AMD processors.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PROXY: &str = env!("CARGO_BIN_EXE_weir-proxy");

/// Kills the proxy however the test ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Four distinct free loopback addresses: the listeners are held until all four are
/// chosen, so the kernel cannot hand the same port out twice.
fn free_addrs() -> (SocketAddr, SocketAddr, SocketAddr, SocketAddr) {
    let held: Vec<TcpListener> = (0..4)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let addr = |i: usize| held[i].local_addr().unwrap();
    (addr(0), addr(1), addr(2), addr(3))
}

/// An echo server on its own threads; its address.
fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = stream.read(&mut buf) {
                    if stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn connect_within(addr: SocketAddr, limit: Duration) -> TcpStream {
    let deadline = Instant::now() + limit;
    loop {
        match TcpStream::connect(addr) {
            Ok(s) => return s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("{addr} did not accept within {limit:?}: {e}"),
        }
    }
}

fn get(addr: SocketAddr, path: &str) -> String {
    let mut s = connect_within(addr, Duration::from_secs(10));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body
}

#[test]
fn forwards_and_reports_on_one_thread_and_on_several() {
    for concurrency in ["1", "2"] {
        let upstream = echo_server();
        let (listen, stats, admin, ready) = free_addrs();
        let _proxy = Running(
            Command::new(PROXY)
                .args(["forward", "--listen", &listen.to_string()])
                .args(["--upstream", &upstream.to_string()])
                .args(["--stats", &stats.to_string(), "--admin", &admin.to_string()])
                .args(["--readiness", &ready.to_string(), "--service", "echo"])
                .args(["--concurrency", concurrency, "--log-level", "warn"])
                .stdout(Stdio::null())
                .spawn()
                .expect("start weir-proxy"),
        );
        let mut client = connect_within(listen, Duration::from_secs(10));
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        client.write_all(b"ping").unwrap();
        let mut back = [0u8; 4];
        client.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"ping", "--concurrency {concurrency}");
        drop(client);

        // The close is recorded, with the bytes, under the source reporter.
        let deadline = Instant::now() + Duration::from_secs(10);
        let closed = loop {
            let body = get(stats, "/stats/prometheus");
            let line = body
                .lines()
                .find(|l| l.starts_with("istio_tcp_connections_closed_total{"))
                .map(str::to_owned);
            if let Some(line) = line.filter(|l| l.ends_with(" 1")) {
                break line;
            }
            assert!(
                Instant::now() < deadline,
                "--concurrency {concurrency}: no closed connection in\n{body}"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(closed.contains(r#"reporter="source""#), "{closed}");
        assert!(
            closed.contains(r#"destination_service_name="echo""#),
            "{closed}"
        );
    }
}

#[test]
fn a_bad_concurrency_is_named() {
    let out = Command::new(PROXY)
        .args([
            "forward",
            "--listen",
            "127.0.0.1:1",
            "--upstream",
            "127.0.0.1:2",
        ])
        .args(["--concurrency", "many"])
        .output()
        .expect("run weir-proxy");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--concurrency"), "{stderr}");
}

/// The proxy's environment once it serves (`/proc/PID/environ`, one variable a line),
/// having checked that it still goes by its own name. glibc 2.36 splits
/// `GLIBC_TUNABLES` at its colons in place, so there each tunable after the first shows
/// on a line of its own.
fn serving_environment(tunables: Option<&str>) -> String {
    let upstream = echo_server();
    let (listen, stats, admin, ready) = free_addrs();
    let mut command = Command::new(PROXY);
    command
        .args(["forward", "--listen", &listen.to_string()])
        .args(["--upstream", &upstream.to_string()])
        .args(["--stats", &stats.to_string(), "--admin", &admin.to_string()])
        .args(["--readiness", &ready.to_string(), "--log-level", "warn"])
        .env_remove("GLIBC_TUNABLES")
        .stdout(Stdio::null());
    if let Some(tunables) = tunables {
        command.env("GLIBC_TUNABLES", tunables);
    }
    let proxy = Running(command.spawn().expect("start weir-proxy"));
    // Serving means any exec is behind it: the listener belongs to the final image.
    drop(connect_within(listen, Duration::from_secs(10)));
    let pid = proxy.0.id();
    // An exec keeps the process's name (what ps, pgrep and pkill see).
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(comm.trim_end(), "weir-proxy");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    String::from_utf8_lossy(&environ).replace('\0', "\n")
}

#[test]
fn on_amd_processors_memcpy_keeps_off_rep_movsb_unless_the_operator_chose() {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    let first = cpuinfo.split("\n\n").next().unwrap();
    let amd = cfg!(all(target_arch = "x86_64", target_env = "gnu"))
        && (first.contains("AuthenticAMD") || first.contains("HygonGenuine"))
        && first
            .lines()
            .any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "erms"));
    let ours = "glibc.cpu.x86_rep_movsb_threshold=1073741824";

    let env = serving_environment(None);
    assert_eq!(
        env.contains(&format!("GLIBC_TUNABLES={ours}\n")),
        amd,
        "{env}"
    );
    assert_eq!(env.contains("GLIBC_TUNABLES="), amd, "{env}");

    let env = serving_environment(Some("glibc.malloc.arena_max=2"));
    assert!(
        env.contains("GLIBC_TUNABLES=glibc.malloc.arena_max=2\n"),
        "{env}"
    );
    let added = env.contains(&format!("\n{ours}\n")) || env.contains(&format!(":{ours}\n"));
    assert_eq!(added, amd, "{env}");

    // The operator's own threshold is kept, on any processor.
    let env = serving_environment(Some("glibc.cpu.x86_rep_movsb_threshold=8192"));
    assert!(
        env.contains("GLIBC_TUNABLES=glibc.cpu.x86_rep_movsb_threshold=8192\n"),
        "{env}"
    );
    assert!(!env.contains("1073741824"), "{env}");
}
