//! One proxy's stream: what it holds, what changed since, and its acknowledgements.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use prost::Message;
use proxy::config::OutboundService;
use sha2::{Digest, Sha256};

use crate::convert::{service_to_proto, workload_to_proto};
use crate::proto::{self, resource::Kind, ResourceType};
use crate::{ProxyView, ServiceMap, WorkloadConfig, WORKLOAD_RESOURCE_NAME};

/// Unacknowledged responses remembered per stream; older ones are forgotten (their
/// latency goes unmeasured) so a proxy that never answers costs bounded memory.
const MAX_PENDING: usize = 64;

/// A resource's version: a hash of its encoding, so equal content has equal versions
/// across control-plane restarts and a reconnecting proxy is not sent what it has.
pub(crate) fn content_version(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    hex::encode(&digest[..8])
}

struct Held<T> {
    /// The shared value last sent, when this stream sent it (absent for what the proxy
    /// reported on reconnect): lets an unchanged resource be skipped without encoding.
    value: Option<Arc<T>>,
    version: String,
}

impl<T> Held<T> {
    /// A version the proxy reported holding.
    fn reported(version: &str) -> Self {
        Self {
            value: None,
            version: version.to_owned(),
        }
    }
}

/// One service's share of the running digest: order-independent when combined with XOR.
fn entry_digest(name: &str, version: &str) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update(b"\0");
    hasher.update(version.as_bytes());
    let digest = hasher.finalize();
    u64::from_le_bytes(
        digest[..8]
            .try_into()
            .expect("a SHA-256 digest has 32 bytes"),
    )
}

/// What the proxy holds (as far as the server knows) and which responses await an
/// answer.
pub(crate) struct StreamState {
    workload: Option<Held<WorkloadConfig>>,
    services: BTreeMap<String, Held<OutboundService>>,
    /// XOR of [`entry_digest`] over the held services.
    services_digest: u64,
    /// The map of the last view diffed.
    last_map: Option<Arc<ServiceMap>>,
    pending: VecDeque<(String, Instant)>,
    next_nonce: u64,
}

/// An answer from the proxy to one response.
pub(crate) enum Answer {
    /// ACK: time since the change that caused the response was observed, when known.
    Ack(Option<std::time::Duration>),
    /// NACK with the proxy's reason.
    Nack(String),
}

impl StreamState {
    /// Starts from what the proxy reports holding.
    pub(crate) fn new(initial: &[proto::ResourceVersion]) -> Self {
        let mut state = Self {
            workload: None,
            services: BTreeMap::new(),
            services_digest: 0,
            last_map: None,
            pending: VecDeque::new(),
            next_nonce: 1,
        };
        for r in initial {
            match ResourceType::try_from(r.r#type) {
                Ok(ResourceType::Service) => {
                    state.hold_service(r.name.clone(), Held::reported(&r.version));
                }
                Ok(ResourceType::Workload) if r.name == WORKLOAD_RESOURCE_NAME => {
                    state.workload = Some(Held::reported(&r.version));
                }
                // Anything else cannot match; it is simply not counted as held.
                _ => {}
            }
        }
        state
    }

    /// The response bringing the proxy from what it holds to `view`, or `None` when
    /// nothing differs and `always` is false. Updates what the proxy is taken to hold.
    pub(crate) fn diff(
        &mut self,
        view: &ProxyView,
        observed: Instant,
        always: bool,
    ) -> Option<proto::DeltaResponse> {
        let mut resources = Vec::new();
        let mut removed = Vec::new();

        let unchanged = self
            .workload
            .as_ref()
            .and_then(|h| h.value.as_ref())
            .is_some_and(|v| Arc::ptr_eq(v, &view.workload));
        if !unchanged {
            let message = workload_to_proto(&view.workload);
            let version = content_version(&message.encode_to_vec());
            if self.workload.as_ref().map(|h| h.version.as_str()) != Some(version.as_str()) {
                resources.push(proto::Resource {
                    name: WORKLOAD_RESOURCE_NAME.to_owned(),
                    version: version.clone(),
                    r#type: ResourceType::Workload as i32,
                    kind: Some(Kind::Workload(message)),
                });
            }
            self.workload = Some(Held {
                value: Some(view.workload.clone()),
                version,
            });
        }

        // Views of one revision share their map: an identical map needs no walk.
        if !self
            .last_map
            .as_ref()
            .is_some_and(|m| Arc::ptr_eq(m, &view.services))
        {
            self.diff_services(&view.services, &mut resources, &mut removed);
            self.last_map = Some(view.services.clone());
        }

        if resources.is_empty() && removed.is_empty() && !always {
            return None;
        }
        let nonce = self.next_nonce.to_string();
        self.next_nonce += 1;
        if self.pending.len() >= MAX_PENDING {
            self.pending.pop_front();
        }
        self.pending.push_back((nonce.clone(), observed));
        Some(proto::DeltaResponse {
            system_version: self.system_version(),
            nonce,
            resources,
            removed,
        })
    }

    /// Records that the proxy holds `held` under `name`, keeping the digest in step.
    fn hold_service(&mut self, name: String, held: Held<OutboundService>) {
        self.services_digest ^= entry_digest(&name, &held.version);
        if let Some(old) = self.services.insert(name.clone(), held) {
            self.services_digest ^= entry_digest(&name, &old.version);
        }
    }

    /// Brings the held services to `map`, walking both sorted maps once: what is new or
    /// different is encoded and added to `resources`, what left goes to `removed`.
    fn diff_services(
        &mut self,
        map: &ServiceMap,
        resources: &mut Vec<proto::Resource>,
        removed: &mut Vec<proto::ResourceKey>,
    ) {
        let mut hold = Vec::new();
        let mut gone = Vec::new();
        let mut held = self.services.iter().peekable();
        for (name, service) in map {
            while let Some((h, _)) = held.next_if(|(h, _)| h.as_str() < name.as_str()) {
                gone.push(h.clone());
            }
            let current = held.next_if(|(h, _)| *h == name).map(|(_, v)| v);
            if current
                .and_then(|h| h.value.as_ref())
                .is_some_and(|v| Arc::ptr_eq(v, service))
            {
                continue;
            }
            let message = service_to_proto(service);
            let version = content_version(&message.encode_to_vec());
            if current.map(|h| h.version.as_str()) != Some(version.as_str()) {
                resources.push(proto::Resource {
                    name: name.clone(),
                    version: version.clone(),
                    r#type: ResourceType::Service as i32,
                    kind: Some(Kind::Service(message)),
                });
            }
            hold.push((name.clone(), service.clone(), version));
        }
        gone.extend(held.map(|(h, _)| h.clone()));

        for (name, service, version) in hold {
            let held = Held {
                value: Some(service),
                version,
            };
            self.hold_service(name, held);
        }
        for name in gone {
            if let Some(old) = self.services.remove(&name) {
                self.services_digest ^= entry_digest(&name, &old.version);
            }
            removed.push(proto::ResourceKey {
                r#type: ResourceType::Service as i32,
                name,
            });
        }
    }

    /// The version of the whole view: a hash of the workload's version and of every held
    /// service's name and version (kept as a running digest, so it costs O(1) per
    /// response rather than a pass over every service).
    fn system_version(&self) -> String {
        let mut hasher = Sha256::new();
        if let Some(w) = &self.workload {
            hasher.update(b"workload\0");
            hasher.update(w.version.as_bytes());
        }
        hasher.update(b"\0services\0");
        hasher.update(self.services_digest.to_le_bytes());
        hex::encode(&hasher.finalize()[..8])
    }

    /// Interprets a request after the first. `None` for a nonce not awaiting an answer.
    pub(crate) fn answer(&mut self, request: &proto::DeltaRequest) -> Option<Answer> {
        let at = self
            .pending
            .iter()
            .position(|(n, _)| *n == request.response_nonce);
        // An answer to an unknown (or forgotten) nonce still says ACK or NACK.
        let observed = at.and_then(|i| self.pending.remove(i)).map(|(_, t)| t);
        if at.is_none() && request.response_nonce.is_empty() {
            return None;
        }
        Some(match &request.error_detail {
            Some(detail) => Answer::Nack(detail.message.clone()),
            None => Answer::Ack(observed.map(|t| t.elapsed())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::tests_support::{service, workload};

    fn view(services: &[(&str, &Arc<OutboundService>)], w: &Arc<WorkloadConfig>) -> ProxyView {
        ProxyView {
            workload: w.clone(),
            services: Arc::new(
                services
                    .iter()
                    .map(|(n, s)| ((*n).to_owned(), (*s).clone()))
                    .collect(),
            ),
        }
    }

    #[test]
    fn sends_only_what_changed() {
        let w = Arc::new(workload());
        let a = Arc::new(service("a"));
        let b = Arc::new(service("b"));
        let mut state = StreamState::new(&[]);
        let first = state
            .diff(&view(&[("a", &a), ("b", &b)], &w), Instant::now(), true)
            .unwrap();
        assert_eq!(first.resources.len(), 3);
        assert_eq!(first.nonce, "1");
        // Same content in new allocations: nothing to send.
        let a2 = Arc::new(service("a"));
        assert!(state
            .diff(&view(&[("a", &a2), ("b", &b)], &w), Instant::now(), false)
            .is_none());
        let mut changed = service("b");
        changed.addresses.clear();
        let b2 = Arc::new(changed);
        let delta = state
            .diff(&view(&[("b", &b2)], &w), Instant::now(), false)
            .unwrap();
        assert_eq!(
            delta
                .resources
                .iter()
                .map(|r| &r.name[..])
                .collect::<Vec<_>>(),
            ["b"]
        );
        assert_eq!(
            delta.removed,
            [proto::ResourceKey {
                r#type: ResourceType::Service as i32,
                name: "a".to_owned()
            }]
        );
        assert_ne!(delta.system_version, first.system_version);
    }

    #[test]
    fn reported_versions_are_not_resent() {
        let w = Arc::new(workload());
        let a = Arc::new(service("a"));
        let mut state = StreamState::new(&[]);
        let first = state
            .diff(&view(&[("a", &a)], &w), Instant::now(), true)
            .unwrap();
        let held: Vec<_> = first
            .resources
            .iter()
            .map(|r| proto::ResourceVersion {
                r#type: r.r#type,
                name: r.name.clone(),
                version: r.version.clone(),
            })
            .collect();
        let mut again = StreamState::new(&held);
        let resumed = again
            .diff(&view(&[("a", &a)], &w), Instant::now(), true)
            .unwrap();
        assert!(resumed.resources.is_empty());
        assert!(resumed.removed.is_empty());
        assert_eq!(resumed.system_version, first.system_version);
    }
}
