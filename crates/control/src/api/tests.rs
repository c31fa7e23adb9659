use super::client::{Client, ClientError};
use super::*;

/// A server on a free loopback port, stopped on drop.
struct Running {
    addr: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    fn start(dir: &std::path::Path) -> Running {
        let store = Store::open(dir).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            runtime
                .block_on(serve(listener, shared(store), async {
                    let _ = rx.await;
                }))
                .unwrap();
        });
        Running {
            addr,
            stop: Some(tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn manifests(text: &str) -> Manifests {
    Manifests {
        text: text.to_string(),
        file: "m.yaml".to_string(),
    }
}

const SVC: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: ratings
spec:
  ports:
  - port: 9080
    name: http
";

#[test]
fn apply_get_delete_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let server = Running::start(dir.path());
    let client = Client::new(&format!("http://{}/", server.addr));
    assert_eq!(client.addr(), server.addr);

    let r = client.apply(&manifests(SVC)).unwrap();
    assert!(r.ok);
    assert_eq!(r.reply.lines, vec!["service/ratings created"]);
    assert_eq!(r.reply.revision, 1);

    let r = client.apply(&manifests("kind: [")).unwrap();
    assert!(!r.ok);
    assert_eq!(r.reply.revision, 1);
    assert!(r.reply.errors[0].starts_with("m.yaml:"), "{:?}", r.reply);

    let r = client.delete(&manifests("# nothing here\n")).unwrap();
    assert_eq!(
        (r.ok, r.reply.errors),
        (
            false,
            vec![
                "m.yaml: no objects passed to delete; fix: give a file with at least one manifest"
                    .to_string()
            ]
        )
    );

    let query = GetQuery {
        name: None,
        namespace: None,
        output: Some("wide".into()),
    };
    let r = client.get("svc", &query).unwrap();
    assert_eq!(
        r.reply.lines,
        vec![
            "NAMESPACE   NAME      APIVERSION",
            "default     ratings   v1"
        ]
    );
    let r = client
        .get(
            "svc",
            &GetQuery {
                output: Some("xml".into()),
                ..GetQuery::default()
            },
        )
        .unwrap();
    assert!(!r.ok);
    assert_eq!(
        r.reply.errors,
        vec!["error: unknown output format `xml`; use -o yaml, -o json or -o wide"]
    );
    // Names that need escaping reach the server intact.
    let r = client
        .get(
            "svc",
            &GetQuery {
                name: Some("a b/c".into()),
                namespace: Some("default".into()),
                output: None,
            },
        )
        .unwrap();
    assert_eq!(
        r.reply.errors,
        vec!["Error from server (NotFound): services \"a b/c\" not found"]
    );

    let r = client.delete(&manifests(SVC)).unwrap();
    assert_eq!(
        (r.ok, r.reply.lines, r.reply.revision),
        (true, vec!["service \"ratings\" deleted".to_string()], 2)
    );
    assert_eq!(client.health().unwrap().reply.revision, 2);
    assert_eq!(
        client.analyze().unwrap().reply.lines,
        vec!["No validation issues found."]
    );
}

#[test]
fn nothing_listening_is_unreachable() {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let err = Client::new(&addr).health().unwrap_err();
    assert!(matches!(err, ClientError::Unreachable { .. }), "{err}");
}

#[test]
fn a_non_api_answer_is_reported() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let t = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf).unwrap();
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
            .unwrap();
    });
    let err = Client::new(&addr).health().unwrap_err();
    t.join().unwrap();
    assert!(matches!(err, ClientError::BadResponse { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("HTTP 200 with a body that is not a reply"),
        "{err}"
    );
}
