//! Cross-field rules of the proxy configuration.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use super::{
    ConfigError, Endpoint, EndpointTls, GatewayConfig, GatewayProtocol, InboundMode, OutboundPort,
    PathMatch, ProxyConfig, Route, ServiceRef,
};

struct Checker<'a> {
    source_name: &'a str,
}

impl Checker<'_> {
    fn err(
        &self,
        field: impl Into<String>,
        value: impl ToString,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            source_name: self.source_name.to_owned(),
            field: field.into(),
            value: value.to_string(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }

    fn non_empty(&self, field: &str, value: &str) -> Result<(), ConfigError> {
        if value.trim().is_empty() {
            return Err(self.err(field, value, "must not be empty", "set a non-empty value"));
        }
        Ok(())
    }

    fn dns_label(&self, field: &str, value: &str) -> Result<(), ConfigError> {
        self.non_empty(field, value)?;
        let ok = value.len() <= 253
            && value
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
        if !ok {
            return Err(self.err(
                field,
                value,
                "is not a Kubernetes name",
                "use lower-case letters, digits, '-' and '.' only",
            ));
        }
        Ok(())
    }

    fn positive(&self, field: &str, d: Duration) -> Result<(), ConfigError> {
        if d.is_zero() {
            return Err(self.err(
                field,
                super::format_duration(d),
                "must be greater than zero",
                "set a positive duration such as \"5s\"",
            ));
        }
        Ok(())
    }
}

impl Checker<'_> {
    fn service_ref(&self, field: &str, r: &ServiceRef) -> Result<(), ConfigError> {
        self.dns_label(&format!("{field}.name"), &r.name)?;
        self.dns_label(&format!("{field}.namespace"), &r.namespace)?;
        if let Some(host) = &r.hostname {
            self.dns_label(&format!("{field}.hostname"), host)?;
        }
        Ok(())
    }

    fn service_port_policy(&self, pfield: &str, port: &OutboundPort) -> Result<(), ConfigError> {
        if port.max_connections == Some(0) {
            return Err(self.err(
                format!("{pfield}.maxConnections"),
                0,
                "refuses every connection",
                "set it to 1 or more, or remove it for no limit",
            ));
        }
        if let Some(d) = port.connect_timeout {
            self.positive(&format!("{pfield}.connectTimeout"), d)?;
        }
        Ok(())
    }

    fn route(&self, field: &str, route: &Route, has_tls: bool) -> Result<(), ConfigError> {
        self.service_ref(&format!("{field}.destination"), &route.destination)?;
        if let Some(subset) = &route.subset {
            self.non_empty(&format!("{field}.subset"), subset)?;
        }
        if let Some(why) = &route.unresolved {
            self.non_empty(&format!("{field}.unresolved"), why)?;
            if !route.endpoints.is_empty() {
                return Err(self.err(
                    format!("{field}.unresolved"),
                    why,
                    format!(
                        "marks the route unresolved but it lists {} endpoint(s)",
                        route.endpoints.len()
                    ),
                    "remove `unresolved` to send connections to the endpoints, or remove the endpoints to refuse them with NC",
                ));
            }
        }
        for (k, ep) in route.endpoints.iter().enumerate() {
            self.endpoint(&format!("{field}.endpoints[{k}]"), ep, has_tls)?;
        }
        Ok(())
    }

    fn endpoint(&self, efield: &str, ep: &Endpoint, has_tls: bool) -> Result<(), ConfigError> {
        if ep.address.port() == 0 {
            return Err(self.err(
                format!("{efield}.address"),
                ep.address,
                "has no port",
                "write the endpoint as IP:PORT",
            ));
        }
        if ep.tls != EndpointTls::IstioMutual {
            return Ok(());
        }
        if !has_tls {
            return Err(self.err(
                format!("{efield}.tls"),
                "ISTIO_MUTUAL",
                "needs workload certificates but none are configured",
                "set tls.certDir, or set this endpoint's tls: DISABLE for a peer without a sidecar",
            ));
        }
        match &ep.identity {
            None => Err(self.err(
                format!("{efield}.identity"),
                "",
                "is required with ISTIO_MUTUAL (the server's certificate is checked against it)",
                "set identity: spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>",
            )),
            Some(id) if !is_spiffe_id(id) => Err(self.err(
                format!("{efield}.identity"),
                id,
                "is not a SPIFFE id",
                "write it as spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>",
            )),
            Some(_) => Ok(()),
        }
    }
}

/// Every listener address with the field that declares it, to find clashes.
struct Listeners<'a> {
    checker: &'a Checker<'a>,
    seen: BTreeMap<SocketAddr, String>,
}

impl Listeners<'_> {
    fn add(&mut self, field: String, addr: SocketAddr) -> Result<(), ConfigError> {
        // Port 0 asks the OS for a fresh port, so several may share it.
        if addr.port() == 0 {
            return Ok(());
        }
        if let Some(other) = self.seen.get(&addr) {
            return Err(self.checker.err(
                field,
                addr,
                format!("is already used by `{other}`"),
                "give every listener its own address",
            ));
        }
        self.seen.insert(addr, field);
        Ok(())
    }
}

pub(super) fn validate(config: &ProxyConfig, source_name: &str) -> Result<(), ConfigError> {
    let c = Checker { source_name };
    let node = &config.node;
    c.dns_label("node.namespace", &node.namespace)?;
    c.non_empty("node.workloadName", &node.workload_name)?;
    c.non_empty("node.serviceAccount", &node.service_account)?;
    c.non_empty("node.trustDomain", &node.trust_domain)?;
    if let Some(pod) = &node.pod_name {
        c.non_empty("node.podName", pod)?;
    }

    let has_tls = config.tls.is_some();
    if config.inbound.mode != InboundMode::Disable && !has_tls {
        let mode = match config.inbound.mode {
            InboundMode::Strict => "STRICT",
            _ => "PERMISSIVE",
        };
        if config.inbound.listen.is_some()
            || config.inbound.ports.iter().any(|p| p.listen.is_some())
        {
            return Err(c.err(
                "inbound.mode",
                mode,
                "accepts mutual TLS but no workload certificates are configured",
                "set tls.certDir to a directory with cert-chain.pem, key.pem and root-cert.pem, or set inbound.mode: DISABLE",
            ));
        }
    }

    let mut listeners = Listeners {
        checker: &c,
        seen: BTreeMap::new(),
    };
    listeners.add("admin.listen".into(), config.admin.listen)?;
    if !config.admin.listen.ip().is_loopback() {
        return Err(c.err(
            "admin.listen",
            config.admin.listen,
            "exposes the admin endpoint beyond this host",
            "use a loopback address such as 127.0.0.1:15000",
        ));
    }
    listeners.add("stats.listen".into(), config.stats.listen)?;
    listeners.add("readiness.listen".into(), config.readiness.listen)?;
    if let Some(addr) = config.inbound.listen {
        listeners.add("inbound.listen".into(), addr)?;
    }
    if let Some(addr) = config.outbound.listen {
        listeners.add("outbound.listen".into(), addr)?;
    }

    let mut inbound_ports = BTreeSet::new();
    for (i, port) in config.inbound.ports.iter().enumerate() {
        let field = format!("inbound.ports[{i}]");
        if port.port == 0 {
            return Err(c.err(
                format!("{field}.port"),
                0,
                "is not a port",
                "use the app's port, 1-65535",
            ));
        }
        if !inbound_ports.insert(port.port) {
            return Err(c.err(
                format!("{field}.port"),
                port.port,
                "is listed twice",
                "list each app port once",
            ));
        }
        if let Some(addr) = port.listen {
            listeners.add(format!("{field}.listen"), addr)?;
        }
        if let Some(svc) = &port.service {
            c.dns_label(&format!("{field}.service.name"), &svc.name)?;
            c.dns_label(&format!("{field}.service.namespace"), &svc.namespace)?;
        }
    }

    let mut service_ports = BTreeSet::new();
    for (i, svc) in config.outbound.services.iter().enumerate() {
        let field = format!("outbound.services[{i}]");
        c.dns_label(&format!("{field}.name"), &svc.name)?;
        c.dns_label(&format!("{field}.namespace"), &svc.namespace)?;
        if let Some(host) = &svc.hostname {
            c.dns_label(&format!("{field}.hostname"), host)?;
        }
        for (j, port) in svc.ports.iter().enumerate() {
            let pfield = format!("{field}.ports[{j}]");
            if port.port == 0 {
                return Err(c.err(
                    format!("{pfield}.port"),
                    0,
                    "is not a port",
                    "use the service port, 1-65535",
                ));
            }
            for addr in &svc.addresses {
                if !service_ports.insert((*addr, port.port)) {
                    return Err(c.err(
                        format!("{pfield}.port"),
                        format!("{addr}:{}", port.port),
                        "is claimed by two services",
                        "give each service its own address or port",
                    ));
                }
            }
            if let Some(addr) = port.listen {
                listeners.add(format!("{pfield}.listen"), addr)?;
            }
            for (k, ep) in port.endpoints.iter().enumerate() {
                c.endpoint(&format!("{pfield}.endpoints[{k}]"), ep, has_tls)?;
            }
            c.service_port_policy(&pfield, port)?;
            for (r, route) in port.routes.iter().enumerate() {
                c.route(&format!("{pfield}.routes[{r}]"), route, has_tls)?;
            }
            if !port.routes.is_empty() && port.routes.iter().all(|r| r.weight == 0) {
                let weights: Vec<u32> = port.routes.iter().map(|r| r.weight).collect();
                return Err(c.err(
                    format!("{pfield}.routes[*].weight"),
                    format!("{weights:?}"),
                    "are all 0, so no connection has a destination",
                    "give at least one route a weight above 0",
                ));
            }
        }
    }

    if let Some(gw) = &config.gateway {
        gateway(&c, &mut listeners, gw, has_tls)?;
    }

    let limits = &config.limits;
    c.positive("reporting.interval", config.reporting.interval)?;
    c.positive("limits.connectTimeout", limits.connect_timeout)?;
    c.positive("limits.tlsHandshakeTimeout", limits.tls_handshake_timeout)?;
    c.positive("limits.mxTimeout", limits.mx_timeout)?;
    c.positive(
        "limits.protocolDetectionTimeout",
        limits.protocol_detection_timeout,
    )?;
    if let Some(d) = limits.idle_timeout {
        c.positive("limits.idleTimeout", d)?;
    }
    if let Some(d) = limits.max_connection_duration {
        c.positive("limits.maxConnectionDuration", d)?;
    }
    if let Some(tls) = &config.tls {
        c.positive("tls.pollInterval", tls.poll_interval)?;
    }
    if limits.connect_attempts == 0 {
        return Err(c.err(
            "limits.connectAttempts",
            0,
            "allows no connection at all",
            "set it to 1 or more",
        ));
    }
    if !(8..=16 * 1024 * 1024).contains(&limits.mx_max_frame_bytes) {
        return Err(c.err(
            "limits.mxMaxFrameBytes",
            limits.mx_max_frame_bytes,
            "is out of range",
            "use a value between 8 and 16777216 (default 65536)",
        ));
    }
    if limits.max_connections == Some(0) {
        return Err(c.err(
            "limits.maxConnections",
            0,
            "refuses every connection",
            "set it to 1 or more, or remove it for no limit",
        ));
    }
    crate::sidecar::overrides::tag_overrides(&config.telemetry)
        .map_err(|e| c.err(e.field, e.value, e.problem, e.fix))?;
    Ok(())
}

fn routes(
    c: &Checker<'_>,
    field: &str,
    routes: &[Route],
    has_tls: bool,
) -> Result<(), ConfigError> {
    for (r, route) in routes.iter().enumerate() {
        c.route(&format!("{field}[{r}]"), route, has_tls)?;
    }
    if !routes.is_empty() && routes.iter().all(|r| r.weight == 0) {
        let weights: Vec<u32> = routes.iter().map(|r| r.weight).collect();
        return Err(c.err(
            format!("{field}[*].weight"),
            format!("{weights:?}"),
            "are all 0, so no connection has a destination",
            "give at least one route a weight above 0",
        ));
    }
    Ok(())
}

fn gateway(
    c: &Checker<'_>,
    listeners: &mut Listeners<'_>,
    gw: &GatewayConfig,
    has_tls: bool,
) -> Result<(), ConfigError> {
    let mut ports = BTreeSet::new();
    for (i, server) in gw.servers.iter().enumerate() {
        let field = format!("gateway.servers[{i}]");
        if server.port == 0 {
            return Err(c.err(
                format!("{field}.port"),
                0,
                "is not a port",
                "use the port clients connect to, 1-65535",
            ));
        }
        if !ports.insert(server.port) {
            return Err(c.err(
                format!("{field}.port"),
                server.port,
                "is listed twice",
                "list each gateway port once, with all its routes",
            ));
        }
        if let Some(addr) = server.listen {
            listeners.add(format!("{field}.listen"), addr)?;
        }
        match server.protocol {
            GatewayProtocol::Tcp if !server.http.is_empty() => {
                return Err(c.err(
                    format!("{field}.http"),
                    format!("{} route(s)", server.http.len()),
                    "is set on a TCP server, which does not read HTTP",
                    "use `tcp` routes, or set protocol: HTTP",
                ));
            }
            GatewayProtocol::Http if !server.tcp.is_empty() => {
                return Err(c.err(
                    format!("{field}.tcp"),
                    format!("{} route(s)", server.tcp.len()),
                    "is set on an HTTP server",
                    "use `http` routes, or set protocol: TCP",
                ));
            }
            _ => {}
        }
        routes(c, &format!("{field}.tcp"), &server.tcp, has_tls)?;
        for (j, h) in server.http.iter().enumerate() {
            let hfield = format!("{field}.http[{j}]");
            for (k, m) in h.matches.iter().enumerate() {
                let (PathMatch::Exact(p) | PathMatch::Prefix(p)) = m;
                if !p.starts_with('/') {
                    return Err(c.err(
                        format!("{hfield}.match[{k}]"),
                        p,
                        "is not a path",
                        "start the path with `/`, e.g. /productpage",
                    ));
                }
            }
            for (k, host) in h.hosts.iter().enumerate() {
                let name = host.strip_prefix("*.").unwrap_or(host);
                let ok = host == "*"
                    || (!name.is_empty()
                        && !name.contains('*')
                        && name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
                if !ok {
                    return Err(c.err(
                        format!("{hfield}.hosts[{k}]"),
                        host,
                        "is not a host name",
                        "write a name such as bookinfo.example.com, a wildcard such as *.example.com, or *",
                    ));
                }
            }
            if h.routes.is_empty() {
                return Err(c.err(
                    format!("{hfield}.routes"),
                    "[]",
                    "has no destination",
                    "add at least one route, or remove the entry",
                ));
            }
            routes(c, &format!("{hfield}.routes"), &h.routes, has_tls)?;
        }
    }
    Ok(())
}

/// `spiffe://<trust-domain>/<path>` with a non-empty trust domain and path.
fn is_spiffe_id(id: &str) -> bool {
    id.strip_prefix("spiffe://")
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(td, path)| !td.is_empty() && !path.is_empty())
}
