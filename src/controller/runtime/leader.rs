//! Leader election on a `coordination.k8s.io/v1` Lease, so exactly one replica reconciles.
//!
//! # Guarantees
//! - Every write is guarded by the Lease's `resourceVersion`: two candidates racing for an expired lease
//!   cannot both win (the loser gets 409 and stays standby).
//! - Expiry is judged on this process's monotonic clock from when it last *saw the lease change*
//!   (as client-go does), so clock skew between replicas cannot make a standby steal a live lease.
//! - A leader that cannot renew within `renew_deadline` reports leadership lost (the binary exits, so
//!   its controllers stop before the lease can expire for a standby).
//! - [`LeaderElector::release`] (on SIGTERM) clears the holder so a standby takes over at once.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};

/// Timings of leader election.
#[derive(Clone, Debug)]
pub struct LeaseTimings {
    /// How long a lease is valid after its last renewal.
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before giving up leadership.
    pub renew_deadline: Duration,
    /// Interval between attempts (acquire and renew).
    pub retry_period: Duration,
}

impl Default for LeaseTimings {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Why leadership ended or could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// Another identity holds the lease now.
    #[error("lease {lease} is now held by {holder:?}")]
    Lost {
        /// Lease name.
        lease: String,
        /// The new holder.
        holder: Option<String>,
    },
    /// A renew call was still unanswered when the renew deadline passed.
    #[error("renewing lease {lease} did not complete within the renew deadline")]
    RenewTimedOut {
        /// Lease name.
        lease: String,
    },
    /// Renewal kept failing until the renew deadline passed.
    #[error("failed to renew lease {lease} within the renew deadline: {source}")]
    RenewDeadline {
        /// Lease name.
        lease: String,
        /// The last error.
        #[source]
        source: kube::Error,
    },
}

/// One candidate for leadership.
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timings: LeaseTimings,
    observed: Option<(String, Instant)>,
}

/// What one acquire attempt saw.
#[derive(Debug, PartialEq, Eq)]
pub enum Attempt {
    /// We hold the lease.
    Leader,
    /// Someone else holds a live lease.
    Standby(Option<String>),
}

impl LeaderElector {
    /// A candidate `identity` for the Lease `name` in `api`'s namespace.
    pub fn new(
        api: Api<Lease>,
        name: impl Into<String>,
        identity: impl Into<String>,
        timings: LeaseTimings,
    ) -> Self {
        Self {
            api,
            name: name.into(),
            identity: identity.into(),
            timings,
            observed: None,
        }
    }

    /// This candidate's identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Waits until this candidate holds the lease.
    pub async fn acquire(&mut self) {
        let mut last_holder: Option<Option<String>> = None;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(Attempt::Leader) => {
                    tracing::info!(lease = %self.name, identity = %self.identity, "acquired leader lease");
                    return;
                }
                Ok(Attempt::Standby(holder)) => {
                    if last_holder.as_ref() != Some(&holder) {
                        tracing::info!(lease = %self.name, ?holder, "standby: lease held by another replica");
                        last_holder = Some(holder);
                    }
                }
                Err(e) => {
                    tracing::warn!(lease = %self.name, error = %e, "leader election attempt failed")
                }
            }
            tokio::time::sleep(self.timings.retry_period).await;
        }
    }

    /// Renews the lease every retry period; returns only when leadership is lost.
    pub async fn keep_renewing(&mut self) -> LeaderError {
        let mut last_ok = Instant::now();
        loop {
            tokio::time::sleep(self.timings.retry_period).await;
            // NB: the renew call gets only what is left of the renew deadline: a hung API connection must
            // not keep a leader that can no longer prove its lease acting past it.
            let left = self
                .timings
                .renew_deadline
                .saturating_sub(last_ok.elapsed())
                .max(Duration::from_millis(1));
            let Ok(attempt) = tokio::time::timeout(left, self.try_acquire_or_renew()).await else {
                return LeaderError::RenewTimedOut {
                    lease: self.name.clone(),
                };
            };
            match attempt {
                Ok(Attempt::Leader) => last_ok = Instant::now(),
                Ok(Attempt::Standby(holder)) => {
                    return LeaderError::Lost {
                        lease: self.name.clone(),
                        holder,
                    };
                }
                Err(e) => {
                    tracing::warn!(lease = %self.name, error = %e, "failed to renew leader lease");
                    if last_ok.elapsed() >= self.timings.renew_deadline {
                        return LeaderError::RenewDeadline {
                            lease: self.name.clone(),
                            source: e,
                        };
                    }
                }
            }
        }
    }

    /// Gives the lease up (if we hold it) so a standby can take over immediately.
    pub async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(&self.identity) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
        self.api
            .replace(&self.name, &PostParams::default(), &lease)
            .await?;
        tracing::info!(lease = %self.name, "released leader lease");
        Ok(())
    }

    /// One round: create the lease, renew ours, take an empty or expired one, or stand by.
    pub async fn try_acquire_or_renew(&mut self) -> Result<Attempt, kube::Error> {
        let now = jiff::Timestamp::now();
        let duration_s = i32::try_from(self.timings.lease_duration.as_secs())
            .unwrap_or(i32::MAX)
            .max(1);
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(duration_s),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Leader),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Standby(None)),
                Err(e) => Err(e),
            };
        };

        let rv = lease.metadata.resource_version.clone().unwrap_or_default();
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let ours = holder.as_deref() == Some(self.identity.as_str());
        if !ours && holder.is_some() {
            // Someone else: expired only if unchanged for a whole lease duration on *our* clock.
            let held_for = Duration::from_secs(
                u64::try_from(spec.lease_duration_seconds.unwrap_or(duration_s)).unwrap_or(0),
            );
            let seen_at = match &self.observed {
                Some((seen_rv, at)) if *seen_rv == rv => *at,
                _ => {
                    self.observed = Some((rv.clone(), Instant::now()));
                    Instant::now()
                }
            };
            if seen_at.elapsed() < held_for {
                return Ok(Attempt::Standby(holder));
            }
            tracing::info!(lease = %self.name, ?holder, "leader lease expired; taking over");
        }
        if !ours {
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.holder_identity = Some(self.identity.clone());
        spec.lease_duration_seconds = Some(duration_s);
        spec.renew_time = Some(MicroTime(now));
        // NB: replace carries metadata.resourceVersion, so a concurrent writer makes this fail with 409.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(Attempt::Leader),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let holder = self
                    .api
                    .get_opt(&self.name)
                    .await?
                    .and_then(|l| l.spec)
                    .and_then(|s| s.holder_identity);
                if holder.as_deref() == Some(self.identity.as_str()) {
                    Ok(Attempt::Leader)
                } else {
                    Ok(Attempt::Standby(holder))
                }
            }
            Err(e) => Err(e),
        }
    }
}
