//! The Stripe customer of a Subscription: its own (created with the object's UID in the metadata, found
//! again by it, never by e-mail), or an existing one attached by ID where the ProviderConfig's
//! `adoption.allowedNamespaces` lets the namespace, and only while no other object owns it.

use kube::ResourceExt;

use super::super::runtime::framework::{Progress, persist};
use super::super::{Context, Error, vendor};
use crate::cloud::stripe::{Customer, Stripe};
use crate::crd::conditions::reason;
use crate::crd::{ProviderConfig, Subscription, SubscriptionStatus};

/// The customer `obj` bills, created or attached as needed; its ID is persisted in status before
/// anything else is done with it, and its details follow `spec.customer`.
pub async fn ensure(
    obj: &Subscription,
    ctx: &Context,
    client: &Stripe,
    pc: &ProviderConfig,
    progress: &mut Progress<SubscriptionStatus>,
) -> Result<Customer, Error> {
    let uid = obj.uid().unwrap_or_default();
    // At rest: this generation was brought to Ready before.
    let at_rest = progress.status.observed_generation == obj.metadata.generation
        && crate::crd::conditions::find(&progress.status.conditions, crate::crd::conditions::READY)
            .is_some_and(|c| c.status == crate::crd::conditions::ConditionStatus::True);
    let customer = match progress.status.customer_id.clone() {
        // Nothing asked of the customer changed since it was last brought to the spec: no call (a
        // resync of 10,000 Subscriptions reads nothing per object).
        Some(id) if at_rest => {
            return Ok(Customer {
                id,
                email: None,
                name: None,
                metadata: Default::default(),
                created: None,
            });
        }
        Some(id) => {
            let c = read(client, &id).await?;
            owned_by(&c, &uid, true)?;
            c
        }
        None => {
            let c = match &obj.spec.customer_id {
                Some(id) => attach(obj, ctx, client, pc, id).await?,
                None => match client
                    .find_customer(&uid)
                    .await
                    .map_err(Error::vendor("search the Stripe customer"))?
                {
                    Some(c) => c,
                    None => client
                        .create_customer(
                            &uid,
                            &format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any()),
                        )
                        .await
                        .map_err(Error::vendor("create the Stripe customer"))?,
                },
            };
            progress.status.customer_id = Some(c.id.clone());
            persist(ctx, obj, progress).await?;
            c
        }
    };
    details(obj, client, customer, &uid).await
}

async fn read(client: &Stripe, id: &str) -> Result<Customer, Error> {
    client
        .customer(id)
        .await
        .map_err(Error::vendor("read the Stripe customer"))?
        .ok_or_else(|| {
            Error::permanent(
                reason::EXTERNAL_NOT_FOUND,
                format!("Stripe customer {id} no longer exists"),
            )
        })
}

/// Refuses a customer another object owns (`tagged_only`: also one that carries no owner).
fn owned_by(c: &Customer, uid: &str, tagged_only: bool) -> Result<(), Error> {
    match c.owner() {
        Some(o) if o == uid => Ok(()),
        None if !tagged_only => Ok(()),
        _ => Err(Error::permanent(
            reason::OWNED_BY_ANOTHER,
            format!("Stripe customer {} belongs to another object", c.id),
        )),
    }
}

/// An existing customer, attached by ID.
async fn attach(
    obj: &Subscription,
    ctx: &Context,
    client: &Stripe,
    pc: &ProviderConfig,
    id: &str,
) -> Result<Customer, Error> {
    let ns = obj.namespace().unwrap_or_default();
    if !vendor::adoption_allowed(pc, &ns) {
        return Err(Error::permanent(
            reason::ADOPTION_NOT_ALLOWED,
            format!(
                "ProviderConfig {:?} does not let namespace {ns:?} attach existing customers (spec.adoption.allowedNamespaces)",
                pc.name_any()
            ),
        ));
    }
    if let Some(other) = claimed_by_older(obj, ctx, id)? {
        return Err(Error::permanent(
            reason::CLAIMED_BY_ANOTHER,
            format!("Stripe customer {id} is already claimed by Subscription {other}"),
        ));
    }
    let c = read(client, id).await?;
    owned_by(&c, &obj.uid().unwrap_or_default(), false)?;
    Ok(c)
}

/// The other Subscription (`namespace/name`) that claims customer `id`, if any: one that holds it (its
/// status names it) whatever its age, else an older one whose spec names it. One customer is claimed by
/// one object at most.
fn claimed_by_older(obj: &Subscription, ctx: &Context, id: &str) -> Result<Option<String>, Error> {
    let key = |s: &Subscription| {
        (
            s.metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_second()),
            s.uid(),
        )
    };
    let mine = key(obj);
    let others: Vec<_> = ctx
        .caches()?
        .store::<crate::crd::Subscription>()?
        .state()
        .into_iter()
        .filter(|s| s.uid() != obj.uid())
        .collect();
    let holds =
        |s: &Subscription| s.status.as_ref().and_then(|st| st.customer_id.as_deref()) == Some(id);
    let names = |s: &Subscription| s.spec.customer_id.as_deref() == Some(id) && key(s) < mine;
    Ok(others
        .iter()
        .find(|s| holds(s))
        .or_else(|| others.iter().find(|s| names(s)))
        .map(|s| format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any())))
}

/// Brings the customer's e-mail and name (and the owner tag, for an attached one) to the spec's.
async fn details(
    obj: &Subscription,
    client: &Stripe,
    c: Customer,
    uid: &str,
) -> Result<Customer, Error> {
    let want = obj.spec.customer.as_ref();
    let email = want.map(|w| w.email.as_str());
    let name = want.and_then(|w| w.name.as_deref());
    let stale = email.is_some_and(|e| c.email.as_deref() != Some(e))
        || name.is_some_and(|n| c.name.as_deref() != Some(n))
        || c.owner() != Some(uid);
    if !stale {
        return Ok(c);
    }
    client
        .update_customer(
            uid,
            obj.metadata.generation.unwrap_or(0),
            &c.id,
            email,
            name,
        )
        .await
        .map_err(Error::vendor("update the Stripe customer"))
}

/// At deletion, once no subscription of `obj` is live: the customer `obj` created (`recorded` in status,
/// else found by its tag, as after a lost answer) is deleted when it never held a subscription. A
/// customer attached by ID, or created before the object was, is the account's and stays.
pub async fn remove_unused(
    obj: &Subscription,
    client: &Stripe,
    recorded: Option<&str>,
    subscriptions_held: bool,
) -> Result<(), Error> {
    if subscriptions_held || obj.spec.customer_id.is_some() {
        return Ok(());
    }
    let uid = obj.uid().unwrap_or_default();
    let found = match recorded {
        Some(id) => client.customer(id).await,
        None => client.find_customer(&uid).await,
    }
    .map_err(Error::vendor("read the Stripe customer"))?;
    let Some(c) = found else {
        return Ok(());
    };
    let born = obj
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(0, |t| t.0.as_second());
    if c.owner() != Some(uid.as_str()) || c.created.is_some_and(|at| at < born) {
        return Ok(());
    }
    if recorded.is_none()
        && !client
            .subscriptions_of(&c.id)
            .await
            .map_err(Error::vendor("list the customer's subscriptions"))?
            .is_empty()
    {
        return Ok(());
    }
    client
        .delete_customer(&c.id)
        .await
        .map_err(Error::vendor("delete the unused Stripe customer"))
}
