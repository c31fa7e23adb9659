//! Live configuration updates: validate, refuse what needs a restart, then swap the
//! generation new connections read at accept.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use serde_json::Value;

use super::{overrides, Generation, ProxyHandle};
use crate::config::{ConfigError, ProxyConfig};
use crate::outbound;

/// What an accepted update changed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct UpdateSummary {
    /// The version now in force (shown by `/config_dump`).
    pub version: String,
    /// Top-level sections that differ from the previous configuration (`inbound`,
    /// `outbound`, `reporting`, `limits`, `telemetry`, `gateway`), in that order; empty when only
    /// the version changed.
    pub changed: Vec<String>,
}

/// Why an update was refused. The previous configuration stays in force.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// The new configuration is invalid.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    /// A field changed that a running proxy cannot change.
    #[error("field `{field}` changed from {old} to {new}: {why}; fix: restart the proxy with the new configuration, or keep the current value")]
    RestartRequired {
        /// Dotted path of the field.
        field: String,
        /// The value in force.
        old: String,
        /// The value asked for.
        new: String,
        /// Why it needs a restart.
        why: &'static str,
    },
}

/// Sections a running proxy takes over from an update.
const LIVE_SECTIONS: [&str; 6] = [
    "inbound",
    "outbound",
    "reporting",
    "limits",
    "telemetry",
    "gateway",
];

impl ProxyHandle {
    /// Applies a new configuration to the running proxy; its version becomes the count
    /// of updates so far (`"1"`, `"2"`, ...). See [`update_versioned`](Self::update_versioned).
    pub fn update(&self, config: ProxyConfig) -> Result<UpdateSummary, UpdateError> {
        self.apply(config, None)
    }

    /// Applies a new configuration under the control plane's `version`.
    ///
    /// Validates it, refuses changes that need a restart (node identity, certificate
    /// directory, the capture/admin/stats/readiness listeners, adding, removing or
    /// moving an explicit listener, the socket mark, `telemetry.enabled`), then replaces
    /// at once what can change live: services, routes, endpoints, load balancing and
    /// pool limits, the inbound mode and ports, telemetry overrides, the reporting
    /// interval, limits and the gateway servers and routes (a new server port needs no
    /// listener when traffic arrives through the inbound capture). Connections already open keep the configuration they were
    /// accepted under; new ones use the new one. A refused update changes nothing.
    pub fn update_versioned(
        &self,
        config: ProxyConfig,
        version: String,
    ) -> Result<UpdateSummary, UpdateError> {
        self.apply(config, Some(version))
    }

    fn apply(
        &self,
        config: ProxyConfig,
        version: Option<String>,
    ) -> Result<UpdateSummary, UpdateError> {
        config.validate("update")?;
        let tags =
            overrides::tag_overrides(&config.telemetry).map_err(|e| ConfigError::Invalid {
                source_name: "update".into(),
                field: e.field,
                value: e.value,
                problem: e.problem,
                fix: e.fix,
            })?;
        let _one_at_a_time = self
            .update_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let previous = self.shared.current();
        restart_required(&previous.config, &config)?;
        let version =
            version.unwrap_or_else(|| (self.updates.load(Ordering::SeqCst) + 1).to_string());
        let changed = changed_sections(&previous.config, &config);
        let config = Arc::new(config);
        let next = Arc::new(Generation::new(
            config.clone(),
            version.clone(),
            Some(&previous),
        ));
        self.shared.metrics.set_overrides(tags);
        self.shared.replace(next);
        self.interval.send_if_modified(|d| {
            let differs = *d != config.reporting.interval;
            *d = config.reporting.interval;
            differs
        });
        self.updates.fetch_add(1, Ordering::SeqCst);
        tracing::info!(%version, changed = ?changed, "configuration updated");
        Ok(UpdateSummary { version, changed })
    }
}

fn changed_sections(old: &ProxyConfig, new: &ProxyConfig) -> Vec<String> {
    let (old, new) = (json(old), json(new));
    LIVE_SECTIONS
        .iter()
        .filter(|s| old.get(**s) != new.get(**s))
        .map(|s| (*s).to_owned())
        .collect()
}

fn json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn show(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "(unset)".to_owned(),
        Some(v) => v.to_string(),
    }
}

/// The first leaf under `prefix` that differs between two JSON values.
fn first_difference(prefix: &str, old: Option<&Value>, new: Option<&Value>) -> Option<String> {
    if old == new {
        return None;
    }
    if let (Some(Value::Object(o)), Some(Value::Object(n))) = (old, new) {
        let keys: std::collections::BTreeSet<&String> = o.keys().chain(n.keys()).collect();
        for k in keys {
            if let Some(f) = first_difference(&format!("{prefix}.{k}"), o.get(k), n.get(k)) {
                return Some(f);
            }
        }
    }
    Some(prefix.to_owned())
}

fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, k| v.get(k))
}

fn restart_required(old: &ProxyConfig, new: &ProxyConfig) -> Result<(), UpdateError> {
    let (o, n) = (json(old), json(new));
    let fixed: [(&str, &'static str); 9] = [
        (
            "node",
            "the node identity is sent to every peer and labels every metric",
        ),
        ("tls", "the certificate directory is watched from start-up"),
        ("inbound.listen", "listeners are bound at start-up"),
        ("outbound.listen", "listeners are bound at start-up"),
        ("admin.listen", "listeners are bound at start-up"),
        ("stats.listen", "listeners are bound at start-up"),
        ("readiness.listen", "listeners are bound at start-up"),
        (
            "capture",
            "the socket mark is checked at start-up and matches the capture rules",
        ),
        (
            "telemetry.enabled",
            "metric accounting is switched at start-up",
        ),
    ];
    for (path, why) in fixed {
        let (ov, nv) = (lookup(&o, path), lookup(&n, path));
        if let Some(field) = first_difference(path, ov, nv) {
            return Err(UpdateError::RestartRequired {
                old: show(lookup(&o, &field)),
                new: show(lookup(&n, &field)),
                field,
                why,
            });
        }
    }
    let listeners = |c: &ProxyConfig| -> BTreeMap<String, (String, SocketAddr)> {
        let mut m = BTreeMap::new();
        for (i, p) in c.inbound.ports.iter().enumerate() {
            if let Some(a) = p.listen {
                m.insert(
                    format!("inbound port {}", p.port),
                    (format!("inbound.ports[{i}].listen"), a),
                );
            }
        }
        for (i, svc) in c.outbound.services.iter().enumerate() {
            for (j, p) in svc.ports.iter().enumerate() {
                if let Some(a) = p.listen {
                    m.insert(
                        outbound::port_key(svc, p),
                        (format!("outbound.services[{i}].ports[{j}].listen"), a),
                    );
                }
            }
        }
        let servers = c.gateway.iter().flat_map(|g| g.servers.iter().enumerate());
        for (i, s) in servers {
            if let Some(a) = s.listen {
                m.insert(
                    format!("gateway server {}", s.port),
                    (format!("gateway.servers[{i}].listen"), a),
                );
            }
        }
        m
    };
    let (lo, ln) = (listeners(old), listeners(new));
    let keys: std::collections::BTreeSet<&String> = lo.keys().chain(ln.keys()).collect();
    for k in keys {
        let (a, b) = (lo.get(k), ln.get(k));
        if a.map(|x| x.1) != b.map(|x| x.1) {
            let field = b.or(a).map(|x| x.0.clone()).unwrap_or_default();
            return Err(UpdateError::RestartRequired {
                field,
                old: a.map_or("(none)".into(), |x| format!("{:?} for {k}", x.1.to_string())),
                new: b.map_or("(none)".into(), |x| format!("{:?} for {k}", x.1.to_string())),
                why: "explicit listeners are bound at start-up and cannot be added, removed or moved live",
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_fields_are_named() {
        let old = ProxyConfig::minimal("default", "a");
        let mut new = old.clone();
        new.node.namespace = "other".into();
        let e = restart_required(&old, &new).unwrap_err();
        assert_eq!(
            e.to_string(),
            "field `node.namespace` changed from \"default\" to \"other\": the node identity is sent to every peer and labels every metric; fix: restart the proxy with the new configuration, or keep the current value"
        );
        let mut new = old.clone();
        new.stats.listen = "127.0.0.1:15090".parse().unwrap();
        let e = restart_required(&old, &new).unwrap_err();
        assert!(
            matches!(&e, UpdateError::RestartRequired { field, old, new, .. }
                if field == "stats.listen" && old == "\"127.0.0.1:0\"" && new == "\"127.0.0.1:15090\""),
            "{e}"
        );
        let mut new = old.clone();
        new.limits.connect_attempts = 5;
        new.reporting.interval = std::time::Duration::from_secs(1);
        assert!(restart_required(&old, &new).is_ok());
        assert_eq!(changed_sections(&old, &new), ["reporting", "limits"]);
    }

    #[test]
    fn explicit_listeners_cannot_come_or_go() {
        let old = ProxyConfig::minimal("default", "a");
        let mut new = old.clone();
        new.inbound.ports.push(crate::config::InboundPort {
            port: 9080,
            target: None,
            listen: Some("127.0.0.1:0".parse().unwrap()),
            service: None,
        });
        let e = restart_required(&old, &new).unwrap_err();
        assert_eq!(
            e.to_string(),
            "field `inbound.ports[0].listen` changed from (none) to \"127.0.0.1:0\" for inbound port 9080: explicit listeners are bound at start-up and cannot be added, removed or moved live; fix: restart the proxy with the new configuration, or keep the current value"
        );
        // The same listener with another target is a live change.
        let mut moved = new.clone();
        moved.inbound.ports[0].target = Some("127.0.0.1:9999".parse().unwrap());
        assert!(restart_required(&new, &moved).is_ok());
    }
}
