//! The Subscription reconciler: a Stripe customer and one subscription per object, on the plan (or raw
//! price) the spec names, kept there.
//!
//! - **Exactly one customer and one subscription**, whatever crashes in between: the customer's create
//!   has parameters that never change for the object (so a retry within Stripe's 24 hours replays the
//!   first answer) and is preceded by a search by the object's UID (which finds it after that); the
//!   subscription is looked for in the list of its customer's subscriptions (current the moment a create
//!   returns) before it is created. Each ID is persisted in status as soon as it is known.
//! - **Changes**: a plan, price or quantity change updates the subscription's item with the spec's
//!   `prorationBehavior`; `cancelAtPeriodEnd` follows the spec.
//! - **Status**: Stripe's status, the current period, the latest invoice. `active` and `trialing` are
//!   Ready; `incomplete`, `past_due` and `unpaid` are `Ready=False` `PaymentFailed`; `canceled` and
//!   `incomplete_expired` are terminal, `Stalled`, never recreated (a new subscription charges again:
//!   create a new object to subscribe again).
//! - **Revenue**: paid invoices become ledger payments of the Project it entitles ([`revenue`]).
//! - **Deletion** (`deletionPolicy`): `Cancel` cancels now, `CancelAtPeriodEnd` keeps the object
//!   Terminating with `status.endsAt` until the period ends, `Orphan` leaves it running.
//! - Stripe's webhooks (see `crate::webhooks`) only wake the object: state is always read back from Stripe.

pub mod customer;
pub mod decide;
pub mod limits;
pub mod plan;
pub mod revenue;
pub mod stripe_events;
pub mod usage;
mod wire;

pub use stripe_events::stripe_event;
pub use wire::wire;

/// The Subscription kind, as the runtime runs it.
pub const WIRE: crate::controller::runtime::Wire =
    crate::controller::runtime::Wire::of::<Subscription>(wire);

crate::controller::runtime::framework::managed_namespaced!(Subscription, SubscriptionStatus);

use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use decide::{TERMINAL, health, observe, rfc3339};

use super::runtime::framework::{Cleanup, Outcome, Progress, Reconciler, persist};
use super::{Context, Error, vendor};
use crate::cloud::stripe::{Stripe, Subscription as StripeSub};
use crate::crd::conditions::reason;
use crate::crd::subscription::InvoiceSummary;
use crate::crd::{Project, Subscription, SubscriptionDeletionPolicy, SubscriptionStatus};

/// Reconciles Subscriptions.
pub struct SubscriptionReconciler;

async fn client_for(
    obj: &Subscription,
    ctx: &Context,
) -> Result<(vendor::Resolved, Arc<Stripe>), Error> {
    let ns = obj.namespace().unwrap_or_default();
    let r = vendor::resolve(ctx, &obj.spec.provider_config_ref.name, &ns).await?;
    let c = ctx.providers.stripe(ctx, &r).await?;
    Ok((r, c))
}

/// The subscription `obj` made: by its ID in status, else in its customer's list (tagged with its UID),
/// else created now; the ID is persisted as soon as it is known.
async fn ensure(
    obj: &Subscription,
    ctx: &Context,
    client: &Stripe,
    r: &vendor::Resolved,
    customer: &str,
    wanted: &plan::Wanted,
    progress: &mut Progress<SubscriptionStatus>,
) -> Result<StripeSub, Error> {
    let uid = obj.uid().unwrap_or_default();
    if let Some(id) = progress.status.subscription_id.clone() {
        if let Some(s) = listed(obj, ctx, client, r, &id, progress).await? {
            return Ok(s);
        }
        return client
            .subscription(&id)
            .await
            .map_err(Error::vendor("read the Stripe subscription"))?
            .ok_or_else(|| {
                Error::permanent(
                    reason::EXTERNAL_NOT_FOUND,
                    format!("Stripe subscription {id} no longer exists"),
                )
            });
    }
    let earlier = client
        .subscriptions_of(customer)
        .await
        .map_err(Error::vendor("list the customer's subscriptions"))?
        .into_iter()
        .find(|s| s.owner.as_deref() == Some(uid.as_str()));
    let sub = match earlier {
        Some(s) => s,
        None => {
            let mut items = vec![(wanted.price.clone(), Some(obj.spec.quantity))];
            items.extend(wanted.metered.iter().map(|p| (p.clone(), None)));
            client
                .create_subscription(&uid, customer, &items, obj.spec.trial_days)
                .await
                .map_err(Error::vendor("create the Stripe subscription"))?
        }
    };
    progress.status.subscription_id = Some(sub.id.clone());
    persist(ctx, obj, progress).await?;
    Ok(sub)
}

/// Subscription `id` from the account's listing (one listing serves every Subscription of the account
/// at a resync), unless this reconcile needs Stripe's current word: the spec changed, or a Stripe event
/// concerns it (a webhook), or the listing does not hold it.
async fn listed(
    obj: &Subscription,
    ctx: &Context,
    client: &Stripe,
    r: &vendor::Resolved,
    id: &str,
    progress: &Progress<SubscriptionStatus>,
) -> Result<Option<StripeSub>, Error> {
    let uid = obj.uid().unwrap_or_default();
    let reads = ctx.state::<stripe_events::StripeReads>();
    let woken = reads.take_event(&uid);
    if woken || progress.status.observed_generation != obj.metadata.generation {
        reads.read_directly(&uid, jiff::Timestamp::now().as_second());
        return Ok(None);
    }
    let listing = ctx
        .state::<crate::controller::runtime::listings::Listings<StripeSub>>()
        .get(
            &r.config.name_any(),
            r.fingerprint,
            ctx.config.resync_interval / 2,
            || async {
                Ok(client
                    .all_subscriptions()
                    .await?
                    .into_iter()
                    .map(|s| (s.id.clone(), s))
                    .collect())
            },
        )
        .await
        .map_err(Error::vendor("list the account's subscriptions"))?;
    // A listing taken before this object's last direct read (a webhook woke it) is older than what
    // status already shows: read Stripe again rather than write an older state back.
    if reads.read_at(&uid).is_some_and(|read| listing.at <= read) {
        reads.read_directly(&uid, jiff::Timestamp::now().as_second());
        return Ok(None);
    }
    Ok(listing.items.get(id).cloned())
}

/// Brings a live subscription to the spec: the licensed item's price and quantity, then
/// `cancel_at_period_end`.
async fn converge(
    obj: &Subscription,
    ctx: &Context,
    client: &Stripe,
    wanted: &plan::Wanted,
    sub: StripeSub,
) -> Result<StripeSub, Error> {
    let uid = obj.uid().unwrap_or_default();
    let generation = obj.metadata.generation.unwrap_or(0);
    let c = decide::changes(
        &sub,
        wanted,
        obj.spec.quantity,
        obj.spec.cancel_at_period_end,
    );
    let mut sub = sub;
    if let Some(item) = &c.item {
        let change = if obj.spec.proration_behavior == crate::crd::ProrationBehavior::AlwaysInvoice
        {
            limits::Change::UpdateAndInvoice
        } else {
            limits::Change::Update
        };
        let now = jiff::Timestamp::now().as_second();
        if let Err(at) = ctx.state::<limits::Windows>().admit(&sub.id, change, now) {
            return Err(Error::Waiting {
                reason: reason::RATE_LIMITED,
                message: format!(
                    "Stripe allows {} updates an hour and {} new invoices a minute per subscription; the change waits until {}",
                    limits::UPDATES_PER_HOUR,
                    limits::INVOICES_PER_MINUTE,
                    rfc3339(at).unwrap_or_default()
                ),
            });
        }
        ctx.state::<limits::Windows>().note(&sub.id, change, now);
        sub = client
            .update_item(
                &uid,
                generation,
                &sub.id,
                item,
                &wanted.price,
                obj.spec.quantity,
                obj.spec.proration_behavior.as_stripe(),
            )
            .await
            .map_err(Error::vendor("change the Stripe subscription's plan"))?;
    }
    // The plan's metered prices: added when missing, others removed (a plan change).
    if !c.add.is_empty() || !c.remove.is_empty() {
        sub = client
            .change_items(&uid, generation, &sub.id, &c.add, &c.remove)
            .await
            .map_err(Error::vendor("change the subscription's metered prices"))?;
    }
    if let Some(cancel) = c.cancel_at_period_end {
        sub = client
            .cancel_at_period_end(&uid, generation, &sub.id, cancel)
            .await
            .map_err(Error::vendor("set the subscription's cancel_at_period_end"))?;
    }
    Ok(sub)
}

/// The latest invoice in status, and paid invoices credited to the Project as revenue. Invoices are
/// read only when the latest one is new or not final yet.
async fn invoices(
    obj: &Subscription,
    ctx: &Context,
    client: &Stripe,
    sub: &StripeSub,
    st: &mut SubscriptionStatus,
) -> Result<(), Error> {
    let Some(latest) = &sub.latest_invoice else {
        return Ok(());
    };
    let known = st
        .latest_invoice
        .as_ref()
        .filter(|i| i.id.as_ref() == Some(latest));
    if known.is_some_and(|i| matches!(i.status.as_deref(), Some("paid" | "void" | "uncollectible")))
    {
        return Ok(());
    }
    let recent = client
        .invoices(&sub.id, 10)
        .await
        .map_err(Error::vendor("list the subscription's invoices"))?;
    if let Some(inv) = recent.iter().find(|i| &i.id == latest) {
        st.latest_invoice = Some(InvoiceSummary {
            id: Some(inv.id.clone()),
            status: inv.status.clone(),
            amount_due: Some(revenue::display_amount(inv.amount_due, &inv.currency)),
            currency: Some(inv.currency.to_ascii_uppercase()),
            hosted_invoice_url: inv.hosted_invoice_url.clone(),
        });
    }
    credit_paid(obj, ctx, &recent).await
}

/// The Project `obj` names, from the cache (None: it names none, or it does not exist).
pub fn project_of(ctx: &Context, obj: &Subscription) -> Result<Option<Arc<Project>>, Error> {
    let Some(p) = &obj.spec.project_ref else {
        return Ok(None);
    };
    let ns = obj.namespace().unwrap_or_default();
    Ok(ctx
        .caches()?
        .store::<Project>()?
        .get(&ObjectRef::<Project>::new(&p.name).within(&ns)))
}

/// Paid invoices as payments of the entitled Project (once each: keyed by invoice).
async fn credit_paid(
    obj: &Subscription,
    ctx: &Context,
    recent: &[crate::cloud::stripe::Invoice],
) -> Result<(), Error> {
    let (Some(ledger), Some(p)) = (&ctx.ledger, &obj.spec.project_ref) else {
        return Ok(());
    };
    let ns = obj.namespace().unwrap_or_default();
    let Some(project) = project_of(ctx, obj)? else {
        return Ok(());
    };
    let uid = project.uid().unwrap_or_default();
    let payer = revenue::Payer {
        namespace: &ns,
        project: &p.name,
        project_uid: &uid,
    };
    for c in recent.iter().filter_map(|i| revenue::payment(i, &payer)) {
        ledger.credit(&c).await?;
    }
    Ok(())
}

/// The recent invoices (newest first, at most `limit`) of Subscription `namespace/name`, read from
/// Stripe through its ProviderConfig (for `quartermaster invoices`).
pub async fn recent_invoices(
    ctx: &Context,
    namespace: &str,
    name: &str,
    limit: u32,
) -> Result<Vec<crate::cloud::stripe::Invoice>, Box<dyn std::error::Error>> {
    let subs: kube::Api<Subscription> = kube::Api::namespaced(ctx.client.clone(), namespace);
    let sub = subs
        .get_opt(name)
        .await?
        .ok_or_else(|| format!("Subscription {namespace}/{name} not found"))?;
    let Some(id) = sub.status.as_ref().and_then(|s| s.subscription_id.clone()) else {
        return Err(
            format!("Subscription {namespace}/{name} has no Stripe subscription yet").into(),
        );
    };
    let pcs: kube::Api<crate::crd::ProviderConfig> = kube::Api::all(ctx.client.clone());
    let pc_name = &sub.spec.provider_config_ref.name;
    let pc = pcs
        .get_opt(pc_name)
        .await?
        .ok_or_else(|| format!("ProviderConfig {pc_name:?} not found"))?;
    if !vendor::namespace_allowed(&pc.spec.allowed_namespaces, namespace) {
        return Err(
            format!("ProviderConfig {pc_name:?} does not allow namespace {namespace:?}").into(),
        );
    }
    let r = vendor::account_for_reading(ctx, pc).await?;
    let client = ctx.providers.stripe(ctx, &r).await?;
    Ok(client.invoices(&id, limit).await?)
}

impl Reconciler<Subscription> for SubscriptionReconciler {
    fn account(obj: &Subscription) -> Option<String> {
        Some(obj.spec.provider_config_ref.name.clone())
    }

    async fn apply(
        &self,
        obj: Arc<Subscription>,
        ctx: Arc<Context>,
        progress: &mut Progress<SubscriptionStatus>,
    ) -> Result<Outcome, Error> {
        let (r, client) = client_for(&obj, &ctx).await?;
        let wanted = plan::wanted(&obj.spec, &r.config)
            .map_err(|m| Error::permanent(reason::UNKNOWN_PLAN, m))?;
        let customer = customer::ensure(&obj, &ctx, &client, &r.config, progress).await?;
        let sub = ensure(&obj, &ctx, &client, &r, &customer.id, &wanted, progress).await?;
        let sub = if TERMINAL.contains(&sub.status.as_str()) {
            sub
        } else {
            converge(&obj, &ctx, &client, &wanted, sub).await?
        };
        let st = &mut progress.status;
        st.plan = Some(wanted.label.clone());
        observe(st, &sub, &super::runtime::framework::now());
        invoices(&obj, &ctx, &client, &sub, st).await?;
        let (h, resync_at_most) = health(&sub, &wanted.label, jiff::Timestamp::now().as_second());
        let mut outcome = Outcome::new(h);
        outcome.resync_at_most = resync_at_most;
        let metered = plan::find(&r.config, &wanted.label)
            .filter(|_| obj.spec.plan.is_some())
            .map(|p| p.metered.clone())
            .unwrap_or_default();
        if !metered.is_empty() && !TERMINAL.contains(&sub.status.as_str()) {
            usage::report(&ctx, &obj, &client, &customer.id, &metered).await?;
            let every = ctx.config.stripe_usage_interval;
            outcome.resync_at_most = Some(outcome.resync_at_most.map_or(every, |d| d.min(every)));
        }
        Ok(outcome)
    }

    async fn cleanup(
        &self,
        obj: Arc<Subscription>,
        ctx: Arc<Context>,
        progress: &mut Progress<SubscriptionStatus>,
    ) -> Result<Cleanup, Error> {
        let policy = obj.spec.deletion_policy;
        if policy == SubscriptionDeletionPolicy::Orphan {
            return Ok(Cleanup::Done);
        }
        let Some(customer) = progress.status.customer_id.clone() else {
            // No customer was recorded, so nothing was subscribed; one whose creation's answer was
            // lost is removed when the account can be reached (a customer alone costs nothing, so
            // an account that cannot be does not hold the deletion).
            if let Ok((_, client)) = client_for(&obj, &ctx).await
                && let Err(e) = customer::remove_unused(&obj, &client, None, false).await
            {
                tracing::warn!(error = %e, "could not look for an unused Stripe customer of a deleted Subscription");
            }
            return Ok(Cleanup::Done);
        };
        let (_, client) = client_for(&obj, &ctx).await?;
        let uid = obj.uid().unwrap_or_default();
        // What it made, by ID or (an answer lost before the ID was written) by its tag.
        let all = client
            .subscriptions_of(&customer)
            .await
            .map_err(Error::vendor("list the customer's subscriptions"))?;
        let held = !all.is_empty();
        let subs: Vec<StripeSub> = all
            .into_iter()
            .filter(|s| s.owner.as_deref() == Some(uid.as_str()))
            .filter(|s| !TERMINAL.contains(&s.status.as_str()))
            .collect();
        let mut wait_until = None;
        for s in subs {
            if policy == SubscriptionDeletionPolicy::Cancel {
                client
                    .cancel_now(&s.id)
                    .await
                    .map_err(Error::vendor("cancel the Stripe subscription"))?;
                continue;
            }
            let s = if s.cancel_at_period_end {
                s
            } else {
                let generation = obj.metadata.generation.unwrap_or(0);
                client
                    .cancel_at_period_end(&uid, generation, &s.id, true)
                    .await
                    .map_err(Error::vendor("cancel the subscription at its period's end"))?
            };
            observe(&mut progress.status, &s, &super::runtime::framework::now());
            wait_until = Some(s.current_period.1);
        }
        match wait_until {
            None => {
                customer::remove_unused(&obj, &client, Some(&customer), held).await?;
                if let Some(id) = &progress.status.subscription_id {
                    ctx.state::<limits::Windows>().forget(id);
                }
                Ok(Cleanup::Done)
            }
            Some(end) => {
                let left = (end - jiff::Timestamp::now().as_second()).max(0);
                Ok(Cleanup::Wait {
                    message: format!(
                        "the Stripe subscription ends at its period's end, {}; the object stays until then",
                        rfc3339(end).unwrap_or_default()
                    ),
                    requeue_after: Duration::from_secs(u64::try_from(left).unwrap_or(0) + 5)
                        .min(ctx.config.resync_interval),
                })
            }
        }
    }
}
