//! Publishing Kubernetes Events (`events.k8s.io/v1`) in bounded memory.
//!
//! kube's `Recorder` keeps a full copy of every Event it published for six minutes and scans all of them
//! on every publish: at 10,000 objects that is tens of megabytes and a cost that grows with the square of
//! the fleet. This recorder keeps only a small record of recent Events (name, count, time), at most
//! [`MAX_RECENT`] of them, which is all it needs to turn a repeat into a series count instead of a new
//! Event.
//!
//! # Guarantees
//! - The same Event (type, reason, note, action, object) repeated within [`SERIES_WINDOW`] patches the
//!   series count of the first one instead of creating another object.
//! - Memory is bounded: expired records are dropped at most every few seconds, and when more than
//!   [`MAX_RECENT`] are recent all are forgotten (a repeat then starts a new Event; nothing else changes).

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Reporter};
use kube::{Api, Client};

/// How long a published Event can still grow a series (kube's recorder uses the same).
pub const SERIES_WINDOW: Duration = Duration::from_secs(360);

/// Most recent Events remembered for series.
pub const MAX_RECENT: usize = 4096;

/// How often expired records are dropped.
const PRUNE_EVERY: Duration = Duration::from_secs(5);

/// What is remembered of one published Event.
struct Seen {
    name: String,
    namespace: String,
    count: i32,
    at: Instant,
}

/// The recent Events, by a hash of what makes two Events the same.
struct Recent {
    seen: HashMap<u64, Seen>,
    pruned: Instant,
}

impl Recent {
    fn prune(&mut self, now: Instant) {
        if self.seen.len() <= MAX_RECENT && now.duration_since(self.pruned) < PRUNE_EVERY {
            return;
        }
        self.pruned = now;
        self.seen
            .retain(|_, s| now.duration_since(s.at) < SERIES_WINDOW);
        if self.seen.len() > MAX_RECENT {
            self.seen.clear();
        }
    }
}

/// Publishes Events as reporter `reporter`.
pub struct EventRecorder {
    client: Client,
    reporter: Reporter,
    recent: Mutex<Recent>,
}

impl EventRecorder {
    /// A recorder publishing through `client`.
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Self {
            client,
            reporter,
            recent: Mutex::new(Recent {
                seen: HashMap::new(),
                pruned: Instant::now(),
            }),
        }
    }

    /// How many Events are remembered for series right now.
    pub fn remembered(&self) -> usize {
        self.recent.lock().expect("events lock").seen.len()
    }

    /// Publishes `ev` about `regarding`: a new Event, or the next count of the same recent one.
    pub async fn publish(
        &self,
        ev: &Event,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let key = key(ev, regarding);
        let now = Instant::now();
        let repeat = {
            let mut recent = self.recent.lock().expect("events lock");
            recent.prune(now);
            recent.seen.get_mut(&key).map(|s| {
                s.count += 1;
                s.at = now;
                (s.name.clone(), s.namespace.clone(), s.count)
            })
        };
        if let Some((name, namespace, count)) = repeat {
            let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), &namespace);
            let patch = serde_json::json!({
                "series": {
                    "count": count,
                    "lastObservedTime": MicroTime(jiff::Timestamp::now()),
                }
            });
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => return Ok(()),
                // Gone at the server (Events expire): start a new one.
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let namespace = regarding
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), &namespace);
        let created = api
            .create(&PostParams::default(), &self.event(ev, regarding))
            .await?;
        let mut recent = self.recent.lock().expect("events lock");
        recent.seen.insert(
            key,
            Seen {
                name: created.metadata.name.unwrap_or_default(),
                namespace,
                count: 1,
                at: now,
            },
        );
        Ok(())
    }

    fn event(&self, ev: &Event, regarding: &ObjectReference) -> K8sEvent {
        let now = jiff::Timestamp::now();
        K8sEvent {
            action: Some(ev.action.clone()),
            reason: Some(ev.reason.clone()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            note: ev.note.clone(),
            metadata: ObjectMeta {
                namespace: regarding.namespace.clone(),
                // Unique per object and moment, as kubectl and client-go name them.
                name: Some(format!(
                    "{}.{:x}",
                    regarding
                        .name
                        .as_deref()
                        .unwrap_or(&self.reporter.controller),
                    now.as_nanosecond()
                )),
                ..Default::default()
            },
            reporting_controller: Some(self.reporter.controller.clone()),
            reporting_instance: Some(
                self.reporter
                    .instance
                    .clone()
                    .unwrap_or_else(|| self.reporter.controller.clone()),
            ),
            type_: Some(
                match ev.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            related: ev.secondary.clone(),
            ..Default::default()
        }
    }
}

/// What makes two Events the same: type, reason, note, action and the object (by UID when it has one).
fn key(ev: &Event, regarding: &ObjectReference) -> u64 {
    let mut h = DefaultHasher::new();
    matches!(ev.type_, EventType::Warning).hash(&mut h);
    ev.reason.hash(&mut h);
    ev.note.hash(&mut h);
    ev.action.hash(&mut h);
    regarding.kind.hash(&mut h);
    regarding.namespace.hash(&mut h);
    regarding.name.hash(&mut h);
    regarding.uid.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(reason: &str, note: &str) -> Event {
        Event {
            type_: EventType::Normal,
            reason: reason.into(),
            note: Some(note.into()),
            action: "Reconcile".into(),
            secondary: None,
        }
    }

    fn obj(name: &str) -> ObjectReference {
        ObjectReference {
            kind: Some("VirtualMachine".into()),
            namespace: Some("a".into()),
            name: Some(name.into()),
            uid: Some(format!("uid-{name}")),
            ..Default::default()
        }
    }

    #[test]
    fn the_same_event_has_the_same_key_and_others_differ() {
        let k = key(&ev("Created", "x"), &obj("web"));
        assert_eq!(k, key(&ev("Created", "x"), &obj("web")));
        assert_ne!(k, key(&ev("Created", "y"), &obj("web")));
        assert_ne!(k, key(&ev("Ready", "x"), &obj("web")));
        assert_ne!(k, key(&ev("Created", "x"), &obj("db")));
    }

    #[test]
    fn memory_stays_bounded() {
        let start = Instant::now();
        let mut r = Recent {
            seen: HashMap::new(),
            pruned: start,
        };
        let seen = |at| Seen {
            name: String::new(),
            namespace: String::new(),
            count: 1,
            at,
        };
        // Expired records go at the next prune.
        r.seen.insert(1, seen(start));
        r.prune(start + SERIES_WINDOW + PRUNE_EVERY);
        assert!(r.seen.is_empty());
        // More recent records than the cap: all are forgotten at once.
        let now = start + SERIES_WINDOW * 2;
        for i in 0..=MAX_RECENT as u64 {
            r.seen.insert(i, seen(now));
        }
        r.prune(now);
        assert!(r.seen.is_empty());
        // Within the cap and recent: kept.
        r.seen.insert(7, seen(now));
        r.prune(now + PRUNE_EVERY);
        assert_eq!(r.seen.len(), 1);
    }
}
