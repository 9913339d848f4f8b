//! 1NCE's network events of a SIM (attach, detach, location updates, PDP contexts), read with the
//! SIM's quotas (when they are due: within 1NCE's rate limit, one call per SIM per read). Each event is
//! published once as a Kubernetes Event, by 1NCE's event ID (the newest published is kept in
//! `status.network.lastEventID`, saved before the Events are sent), at most [`MAX_EVENTS`] per read
//! (older ones are counted in one line, so a chatty SIM cannot flood the namespace's Events); the last
//! network, country and time seen are kept in status.

use kube::runtime::events::EventType;

use super::Claimed;
use crate::cloud::onence::SimEvent;
use crate::controller::runtime::framework::{Progress, persist, publish};
use crate::controller::{Context, Error};
use crate::crd::SimCard;
use crate::crd::sim_card::{SimCardStatus, SimNetwork};

/// Events read per SIM per read (1NCE's newest).
pub const PAGE: usize = 50;
/// Events published per SIM per read at most.
pub const MAX_EVENTS: usize = 10;
/// Event reason: a SIM's network event.
pub const NETWORK_EVENT: &str = "NetworkEvent";

/// What a read brings: the events to publish (oldest first), how many newer-than-published ones are
/// not shown, and the status to keep.
#[derive(Debug, PartialEq)]
pub struct Taken {
    /// Published now.
    pub publish: Vec<SimEvent>,
    /// New but beyond [`MAX_EVENTS`]: counted, not shown.
    pub skipped: usize,
    /// The status to keep.
    pub network: SimNetwork,
}

/// The events after `seen` (their IDs increase), the newest [`MAX_EVENTS`] of them to publish, and the
/// last place seen: from the newest event that names a network or a country.
pub fn take(seen: Option<&SimNetwork>, mut events: Vec<SimEvent>) -> Taken {
    events.sort_by_key(|e| e.id);
    let last = seen.and_then(|s| s.last_event_id);
    events.retain(|e| last.is_none_or(|l| e.id > l));
    let mut network = seen.cloned().unwrap_or_default();
    if let Some(newest) = events.last() {
        network.last_event_id = Some(newest.id);
    }
    if let Some(e) = events
        .iter()
        .rev()
        .find(|e| e.network.is_some() || e.country.is_some())
    {
        network.name = e.network.clone();
        network.country = e.country.clone();
        network.seen_at = e.at.clone();
        network.event = Some(e.kind.clone());
    }
    let skipped = events.len().saturating_sub(MAX_EVENTS);
    Taken {
        publish: events.split_off(skipped),
        skipped,
        network,
    }
}

fn note(iccid: &str, e: &SimEvent) -> String {
    let mut n = format!("SIM {iccid}: {}", e.kind);
    if let Some(d) = &e.description {
        n.push_str(&format!(": {d}"));
    }
    let place: Vec<&str> = [e.network.as_deref(), e.country.as_deref()]
        .into_iter()
        .flatten()
        .collect();
    if !place.is_empty() {
        n.push_str(&format!(" ({})", place.join(", ")));
    }
    if let Some(at) = &e.at {
        n.push_str(&format!(" at {at}"));
    }
    n.push_str(&format!(" [1NCE event {}]", e.id));
    n
}

/// Reads the SIM's events and publishes the new ones, once: status first, then the Events.
pub(super) async fn read(
    obj: &SimCard,
    ctx: &Context,
    c: &Claimed,
    progress: &mut Progress<SimCardStatus>,
) -> Result<(), Error> {
    let events = c
        .client
        .sim_events(&c.iccid, PAGE)
        .await
        .map_err(Error::vendor("read the SIM's network events"))?;
    let taken = take(progress.status.network.as_ref(), events);
    if progress.status.network.as_ref() == Some(&taken.network) {
        return Ok(());
    }
    progress.status.network = Some(taken.network);
    persist(ctx, obj, progress).await?;
    if taken.skipped > 0 {
        let n = format!(
            "SIM {}: at least {} earlier network events not shown (at most {MAX_EVENTS} per read)",
            c.iccid, taken.skipped
        );
        publish(ctx, obj, EventType::Normal, NETWORK_EVENT, &n).await;
    }
    for e in &taken.publish {
        let type_ = if e.alert {
            EventType::Warning
        } else {
            EventType::Normal
        };
        publish(ctx, obj, type_, NETWORK_EVENT, &note(&c.iccid, e)).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: i64, network: Option<&str>) -> SimEvent {
        SimEvent {
            id,
            kind: if network.is_some() {
                "Update location"
            } else {
                "Delete PDP Context"
            }
            .into(),
            at: Some(format!("2026-12-05T00:00:{:02}Z", id % 60)),
            alert: false,
            description: None,
            network: network.map(str::to_string),
            country: network.map(|_| "Germany".to_string()),
        }
    }

    #[test]
    fn each_event_is_published_once_and_at_most_ten_a_read() {
        let first = take(None, vec![ev(2, Some("Telekom")), ev(1, None), ev(3, None)]);
        assert_eq!(
            first.publish.iter().map(|e| e.id).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!(first.network.last_event_id, Some(3));
        assert_eq!(
            first.network.name.as_deref(),
            Some("Telekom"),
            "the newest that names one"
        );
        // Read again with one new event: only it.
        let again = take(
            Some(&first.network),
            vec![ev(3, None), ev(2, Some("Telekom")), ev(4, Some("Vodafone"))],
        );
        assert_eq!(again.publish.iter().map(|e| e.id).collect::<Vec<_>>(), [4]);
        assert_eq!(again.network.name.as_deref(), Some("Vodafone"));
        // Nothing new: nothing published, status unchanged.
        let none = take(Some(&again.network), vec![ev(4, Some("Vodafone"))]);
        assert!(none.publish.is_empty());
        assert_eq!(none.network, again.network);
        // A flood: the newest ten, the rest counted.
        let flood = take(Some(&again.network), (5..30).map(|i| ev(i, None)).collect());
        assert_eq!(flood.publish.len(), MAX_EVENTS);
        assert_eq!(flood.skipped, 15);
        assert_eq!(flood.publish[0].id, 20);
        assert_eq!(
            flood.network.name.as_deref(),
            Some("Vodafone"),
            "kept when no new event names one"
        );
    }
}
