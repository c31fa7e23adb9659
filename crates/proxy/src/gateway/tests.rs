use super::*;
use crate::config::{GatewayHttpRoute, GatewayServer, Route, ServiceRef};

/// The bookinfo gateway's one HTTP route.
fn bookinfo() -> GatewayConfig {
    let route = Route {
        weight: 100,
        destination: ServiceRef {
            name: "productpage".into(),
            namespace: "default".into(),
            hostname: None,
        },
        subset: None,
        load_balancer: None,
        endpoints: Vec::new(),
        unresolved: None,
    };
    GatewayConfig {
        servers: vec![GatewayServer {
            port: 8080,
            protocol: GatewayProtocol::Http,
            listen: None,
            tcp: Vec::new(),
            http: vec![GatewayHttpRoute {
                hosts: vec![],
                matches: vec![
                    PathMatch::Exact("/productpage".into()),
                    PathMatch::Prefix("/static".into()),
                    PathMatch::Exact("/login".into()),
                    PathMatch::Exact("/logout".into()),
                    PathMatch::Prefix("/api/v1/products".into()),
                ],
                routes: vec![route],
            }],
        }],
    }
}

fn route_of(table: &GatewayTable, request: &str) -> Option<String> {
    let path = request_path(request.as_bytes()).unwrap();
    let host = request_host(request.as_bytes());
    table
        .http_route(8080, host, path)
        .map(|s| s.key().to_owned())
}

#[test]
fn bookinfo_paths_select_the_productpage_route() {
    let mut routes = RouteTable::default();
    let table = GatewayTable::build(&bookinfo(), &mut routes, &RouteTable::default());
    let hit = Some("gateway:8080/http[0]".to_owned());
    for req in [
        "GET /productpage HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /productpage?u=normal HTTP/1.1\r\n\r\n",
        "GET /productpage#top HTTP/1.1\r\n\r\n",
        "GET /static/bootstrap/css/bootstrap.min.css HTTP/1.1\r\n\r\n",
        "GET /static HTTP/1.1\r\n\r\n",
        "POST /login HTTP/1.1\r\n\r\n",
        "GET /logout HTTP/1.0\r\n\r\n",
        "GET /api/v1/products HTTP/1.1\r\n\r\n",
        "GET /api/v1/products/0/reviews HTTP/1.1\r\n\r\n",
        "GET http://bookinfo.example/productpage?x=1 HTTP/1.1\r\n\r\n",
    ] {
        assert_eq!(route_of(&table, req), hit, "{req:?}");
    }
    for req in [
        "GET /nope HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\n\r\n",
        "GET /productpage/extra HTTP/1.1\r\n\r\n",
        "GET /login2 HTTP/1.1\r\n\r\n",
        "GET /api/v1 HTTP/1.1\r\n\r\n",
        "OPTIONS * HTTP/1.1\r\n\r\n",
    ] {
        assert_eq!(route_of(&table, req), None, "{req:?}");
    }
    assert!(table.serves(8080));
    assert!(!table.serves(80));
}

#[test]
fn a_route_without_match_takes_every_path() {
    let mut config = bookinfo();
    let mut catch_all = config.servers[0].http[0].clone();
    catch_all.matches.clear();
    config.servers[0].http.push(catch_all);
    let mut routes = RouteTable::default();
    let table = GatewayTable::build(&config, &mut routes, &RouteTable::default());
    assert_eq!(
        route_of(&table, "GET /nope HTTP/1.1\r\n\r\n").as_deref(),
        Some("gateway:8080/http[1]")
    );
    assert_eq!(
        route_of(&table, "GET /login HTTP/1.1\r\n\r\n").as_deref(),
        Some("gateway:8080/http[0]")
    );
}

#[test]
fn request_lines_that_are_not_http1_are_refused() {
    for bad in [
        "GET /x\r\n\r\n",
        "GET  /x HTTP/1.1\r\n\r\n",
        "GET /x HTTP/2.0\r\n\r\n",
        "G=T /x HTTP/1.1\r\n\r\n",
        "\r\n\r\n",
        "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    ] {
        assert!(
            matches!(request_path(bad.as_bytes()), Err(HeadError::Malformed(_))),
            "{bad:?}"
        );
    }
    assert!(matches!(
        request_path(b"GET /\xff HTTP/1.1\r\n\r\n"),
        Err(HeadError::Malformed(_))
    ));
}

#[tokio::test]
async fn the_head_is_read_whole_with_what_follows_it() {
    let (mut client, mut server) = tokio::io::duplex(64);
    let request = b"POST /login HTTP/1.1\r\ncontent-length: 3\r\n\r\nabc";
    let write = async {
        // One byte at a time: the terminator arrives split across reads.
        for b in request {
            client.write_all(&[*b]).await.unwrap();
        }
    };
    let (read, ()) = tokio::join!(read_head(&mut server, MAX_HEAD_BYTES, HEAD_TIMEOUT), write);
    let head = read.unwrap();
    assert!(head.starts_with(b"POST /login HTTP/1.1\r\ncontent-length: 3\r\n\r\n"));
    assert_eq!(request_path(&head).unwrap(), "/login");
}

#[tokio::test]
async fn an_oversized_head_is_refused_at_the_limit() {
    let (mut client, mut server) = tokio::io::duplex(MAX_HEAD_BYTES * 2);
    let mut request = b"GET /productpage HTTP/1.1\r\nx-long: ".to_vec();
    request.resize(MAX_HEAD_BYTES + 100, b'a');
    client.write_all(&request).await.unwrap();
    let r = read_head(&mut server, MAX_HEAD_BYTES, HEAD_TIMEOUT).await;
    assert!(matches!(r, Err(HeadError::TooLarge)), "{r:?}");
    // A head of exactly the limit is accepted.
    let (mut client, mut server) = tokio::io::duplex(MAX_HEAD_BYTES * 2);
    let mut request = b"GET /productpage HTTP/1.1\r\nx-long: ".to_vec();
    request.resize(MAX_HEAD_BYTES - 4, b'a');
    request.extend_from_slice(b"\r\n\r\n");
    client.write_all(&request).await.unwrap();
    let head = read_head(&mut server, MAX_HEAD_BYTES, HEAD_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(head.len(), MAX_HEAD_BYTES);
}

#[tokio::test(start_paused = true)]
async fn a_stalled_head_times_out() {
    let (mut client, mut server) = tokio::io::duplex(1024);
    client
        .write_all(b"GET /productpage HTTP/1.1\r\n")
        .await
        .unwrap();
    let r = read_head(&mut server, MAX_HEAD_BYTES, HEAD_TIMEOUT).await;
    assert!(
        matches!(r, Err(HeadError::Timeout(t)) if t == HEAD_TIMEOUT),
        "{r:?}"
    );
    drop(client);
}

#[tokio::test]
async fn a_client_that_closes_early_is_told_apart() {
    let (mut client, mut server) = tokio::io::duplex(1024);
    client.write_all(b"GET /produ").await.unwrap();
    drop(client);
    let r = read_head(&mut server, MAX_HEAD_BYTES, HEAD_TIMEOUT).await;
    assert!(matches!(r, Err(HeadError::Closed(10))), "{r:?}");
}

#[tokio::test]
async fn error_responses_close_the_connection() {
    let (mut client, mut server) = tokio::io::duplex(1024);
    let read = async {
        let mut got = String::new();
        client.read_to_string(&mut got).await.unwrap();
        drop(client);
        got
    };
    let ((), got) = tokio::join!(reply(&mut server, "404 Not Found"), read);
    assert_eq!(
        got,
        "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
}

#[test]
fn the_host_comes_from_the_header_without_its_port() {
    for (req, host) in [
        (
            "GET / HTTP/1.1\r\nHost: bookinfo.example.com\r\n\r\n",
            Some("bookinfo.example.com"),
        ),
        (
            "GET / HTTP/1.1\r\nx: y\r\nhOsT:  Bookinfo:8080 \r\n\r\n",
            Some("Bookinfo"),
        ),
        (
            "GET / HTTP/1.1\r\nhost: [fd00::1]:8080\r\n\r\n",
            Some("[fd00::1]"),
        ),
        (
            "GET http://a.example:80/p HTTP/1.1\r\n\r\n",
            Some("a.example"),
        ),
        ("GET / HTTP/1.0\r\n\r\n", None),
        ("GET / HTTP/1.1\r\nhost:\r\n\r\n", None),
        // A `Host` line after the head's end belongs to the body.
        ("GET / HTTP/1.1\r\n\r\nhost: b\r\n", None),
    ] {
        assert_eq!(request_host(req.as_bytes()), host, "{req:?}");
    }
}

#[test]
fn routes_with_hosts_select_by_host_first() {
    let mut config = bookinfo();
    let mut only = config.servers[0].http[0].clone();
    only.hosts = vec!["bookinfo.example.com".into(), "*.bookinfo.test".into()];
    only.matches.clear();
    config.servers[0].http.insert(0, only);
    let mut routes = RouteTable::default();
    let table = GatewayTable::build(&config, &mut routes, &RouteTable::default());
    for (host, route) in [
        ("bookinfo.example.com", "gateway:8080/http[0]"),
        ("BOOKINFO.example.com:8080", "gateway:8080/http[0]"),
        ("www.bookinfo.test", "gateway:8080/http[0]"),
        ("bookinfo.test", "gateway:8080/http[1]"),
        ("other.example.com", "gateway:8080/http[1]"),
    ] {
        let req = format!("GET /login HTTP/1.1\r\nhost: {host}\r\n\r\n");
        assert_eq!(route_of(&table, &req).as_deref(), Some(route), "{host}");
    }
    assert_eq!(
        route_of(
            &table,
            "GET /other HTTP/1.1\r\nhost: other.example.com\r\n\r\n"
        ),
        None
    );
    assert_eq!(
        route_of(
            &table,
            "GET /other HTTP/1.1\r\nhost: www.bookinfo.test\r\n\r\n"
        )
        .as_deref(),
        Some("gateway:8080/http[0]")
    );
}

#[test]
fn invalid_gateway_configurations_name_the_field() {
    let check = |g: GatewayConfig| {
        let mut c = crate::config::ProxyConfig::minimal("istio-system", "gw");
        c.gateway = Some(g);
        c.validate("gw.yaml").unwrap_err().to_string()
    };
    let mut twice = bookinfo();
    twice.servers.push(twice.servers[0].clone());
    assert_eq!(
        check(twice),
        "gw.yaml: field `gateway.servers[1].port` = \"8080\": is listed twice; fix: list each gateway port once, with all its routes"
    );
    let mut relative = bookinfo();
    relative.servers[0].http[0].matches[1] = PathMatch::Prefix("static".into());
    assert_eq!(
        check(relative),
        "gw.yaml: field `gateway.servers[0].http[0].match[1]` = \"static\": is not a path; fix: start the path with `/`, e.g. /productpage"
    );
    let mut host = bookinfo();
    host.servers[0].http[0].hosts = vec!["a b".into()];
    assert!(check(host).starts_with(
        "gw.yaml: field `gateway.servers[0].http[0].hosts[0]` = \"a b\": is not a host name"
    ),);
    let mut mixed = bookinfo();
    mixed.servers[0].protocol = GatewayProtocol::Tcp;
    assert!(check(mixed).starts_with(
        "gw.yaml: field `gateway.servers[0].http` = \"1 route(s)\": is set on a TCP server"
    ));
    let mut zero = bookinfo();
    zero.servers[0].http[0].routes[0].weight = 0;
    assert!(check(zero).starts_with(
        "gw.yaml: field `gateway.servers[0].http[0].routes[*].weight` = \"[0]\": are all 0"
    ));
}
