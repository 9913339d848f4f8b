//! Credentials outlive their users: a ProviderConfig and its credentials Secret stay until no object
//! holds vendor state through them — a VirtualMachine's server, a SimCard's claimed SIM, a
//! Subscription's Stripe customer — since each needs them to meter and to clean up. The ProviderConfig keeps its finalizer while VMs whose servers
//! were created or adopted through it exist (as Kubernetes keeps a volume claim in use), and puts
//! [`SECRET_FINALIZER`] on its credentials Secret, so deleting a namespace that holds VMs together with
//! their token Secret still deletes every server — also after a controller restart, when no copy of the
//! token is left in memory.
//!
//! Who needs a ProviderConfig is read from the watch caches of the kinds that registered as holders
//! (VirtualMachines, SimCards, Subscriptions, VirtualMachineSnapshots; no API call).

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};

use crate::controller::runtime::framework::FIELD_MANAGER;
use crate::controller::{Context, Error};
use crate::crd::provider_config::SecretKeyReference;
use crate::crd::{
    ANNOTATION_CREATION_INTENT, ANNOTATION_EXTERNAL_ID, ProviderConfig, SimCard, Subscription,
    VirtualMachine,
};

/// The finalizer Quartermaster puts on a ProviderConfig's credentials Secret.
pub const SECRET_FINALIZER: &str = "quartermaster.dev/credentials-in-use";

/// Whether `vm` may need ProviderConfig `pc` to clean up: its server was (or may have been) created or
/// adopted in that account.
pub fn needs(vm: &VirtualMachine, pc: &str) -> bool {
    let st = vm.status.as_ref();
    let account = st
        .and_then(|s| s.provider_config.as_deref())
        .unwrap_or(&vm.spec.provider_config_ref.name);
    let anns = vm.annotations();
    account == pc
        && (st.is_some_and(|s| s.creation_key.is_some() || s.external_id.is_some())
            || anns.contains_key(ANNOTATION_EXTERNAL_ID)
            || anns.contains_key(ANNOTATION_CREATION_INTENT))
}

/// Whether `sim` holds vendor state through ProviderConfig `pc`: it claimed a SIM there (which it
/// meters, and disables when deleted).
pub fn sim_needs(sim: &SimCard, pc: &str) -> bool {
    sim.spec.provider_config_ref.name == pc
        && sim
            .status
            .as_ref()
            .is_some_and(|s| s.claimed_iccid.is_some())
}

/// Whether `sub` holds vendor state through ProviderConfig `pc`: a Stripe customer (and maybe a
/// subscription that charges on until it is canceled).
pub fn subscription_needs(sub: &Subscription, pc: &str) -> bool {
    sub.spec.provider_config_ref.name == pc
        && sub
            .status
            .as_ref()
            .is_some_and(|s| s.customer_id.is_some() || s.subscription_id.is_some())
}

/// The objects (`Kind namespace/name`, sorted) that hold vendor state through ProviderConfig `pc`
/// and need it to meter and clean up: every kind's registered holders
/// ([`Holders`](crate::controller::runtime::holders::Holders)).
pub fn users(ctx: &Context, pc: &str) -> Result<Vec<String>, Error> {
    ctx.caches()?;
    Ok(ctx
        .state::<crate::controller::runtime::holders::Holders>()
        .of(pc))
}

/// The objects that need any ProviderConfig naming Secret `r` (itself included) to meter and clean up.
fn secret_users(ctx: &Context, r: &SecretKeyReference) -> Result<Vec<String>, Error> {
    let mut all = Vec::new();
    for pc in ctx.caches()?.store::<crate::crd::ProviderConfig>()?.state() {
        let s = &pc.spec.credentials_secret_ref;
        if s.namespace == r.namespace && s.name == r.name {
            all.extend(users(ctx, &pc.name_any())?);
        }
    }
    Ok(all)
}

/// Keeps the credentials Secret of `pc` while anything may need it: adds [`SECRET_FINALIZER`] to a live
/// Secret, and releases one being deleted once nothing needs it. Returns the users keeping a Secret that
/// is being deleted (empty otherwise).
pub async fn protect(
    ctx: &Context,
    pc: &ProviderConfig,
    secret: Option<&Secret>,
) -> Result<Vec<String>, Error> {
    let Some(secret) = secret else {
        return Ok(Vec::new());
    };
    let has = secret.finalizers().iter().any(|f| f == SECRET_FINALIZER);
    if secret.meta().deletion_timestamp.is_none() {
        if !has {
            set_finalizer(ctx, secret, true).await?;
        }
        return Ok(Vec::new());
    }
    let users = secret_users(ctx, &pc.spec.credentials_secret_ref)?;
    if users.is_empty() && has {
        set_finalizer(ctx, secret, false).await?;
    }
    Ok(users)
}

/// When ProviderConfig `pc` goes: releases its credentials Secret (see [`release_named`]).
pub async fn release(ctx: &Context, pc: &ProviderConfig) -> Result<(), Error> {
    let r = &pc.spec.credentials_secret_ref;
    release_named(ctx, pc, &format!("{}/{}", r.namespace, r.name)).await
}

/// Releases Secret `namespace/name` on behalf of ProviderConfig `pc`, unless another ProviderConfig that
/// is not being deleted names it.
pub async fn release_named(ctx: &Context, pc: &ProviderConfig, secret: &str) -> Result<(), Error> {
    let Some((namespace, name)) = secret.split_once('/') else {
        return Ok(());
    };
    let shared = ctx
        .caches()?
        .store::<crate::crd::ProviderConfig>()?
        .state()
        .iter()
        .any(|other| {
            let s = &other.spec.credentials_secret_ref;
            other.name_any() != pc.name_any()
                && other.meta().deletion_timestamp.is_none()
                && s.namespace == namespace
                && s.name == name
        });
    if shared {
        return Ok(());
    }
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let Some(secret) = api
        .get_opt(name)
        .await
        .map_err(Error::kube("reading the credentials secret"))?
    else {
        return Ok(());
    };
    if secret.finalizers().iter().any(|f| f == SECRET_FINALIZER) {
        set_finalizer(ctx, &secret, false).await?;
    }
    Ok(())
}

/// Adds or removes [`SECRET_FINALIZER`], guarded by `resourceVersion` (a concurrent change makes this
/// fail with 409 and retry instead of dropping another controller's finalizer).
async fn set_finalizer(ctx: &Context, secret: &Secret, present: bool) -> Result<(), Error> {
    let mut finalizers: Vec<String> = secret
        .finalizers()
        .iter()
        .filter(|f| *f != SECRET_FINALIZER)
        .cloned()
        .collect();
    if present {
        finalizers.push(SECRET_FINALIZER.to_string());
    }
    let patch = serde_json::json!({
        "metadata": { "finalizers": finalizers, "resourceVersion": secret.resource_version() }
    });
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    let api: Api<Secret> =
        Api::namespaced(ctx.client.clone(), &secret.namespace().unwrap_or_default());
    match api
        .patch(&secret.name_any(), &params, &Patch::Merge(&patch))
        .await
    {
        // Gone already: nothing to keep or release.
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Ok(written) => {
            if let Some(rv) = written.resource_version() {
                ctx.state::<SecretWrites>().wrote(
                    format!(
                        "{}/{}",
                        written.namespace().unwrap_or_default(),
                        written.name_any()
                    ),
                    rv,
                );
            }
            Ok(())
        }
        Err(e) => Err(Error::kube("changing the credentials secret's finalizer")(
            e,
        )),
    }
}

/// The credentials Secrets' own finalizer writes: `namespace/name` → the resourceVersion they made (a
/// [`KindState`](crate::controller::runtime::state::KindState) of the ProviderConfig kind).
#[derive(Default)]
pub struct SecretWrites(std::sync::Mutex<std::collections::HashMap<String, String>>);

impl crate::controller::runtime::state::KindState for SecretWrites {}

impl SecretWrites {
    /// Remembers that this controller's own write made `resource_version` of Secret `key`
    /// (`namespace/name`), so the watch event it causes wakes nothing.
    pub fn wrote(&self, key: String, resource_version: String) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, resource_version);
    }

    /// Whether this version of Secret `key` is this controller's own write (forgotten once seen).
    pub fn own(&self, key: &str, resource_version: Option<&str>) -> bool {
        let mut writes = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let own = writes.get(key).map(String::as_str) == resource_version;
        if own || resource_version.is_some() {
            writes.remove(key);
        }
        own
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(status: serde_json::Value, annotations: serde_json::Value) -> VirtualMachine {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "quartermaster.dev/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": "web", "namespace": "a", "annotations": annotations},
            "spec": {"providerConfigRef": {"name": "now"}, "region": "r", "size": "s", "image": "i"},
            "status": status
        }))
        .unwrap()
    }

    #[test]
    fn a_vm_needs_the_account_its_server_is_in() {
        // Never created: needs nothing to clean up.
        assert!(!needs(
            &vm(serde_json::json!({}), serde_json::json!({})),
            "now"
        ));
        // Created through "before" and since pointed elsewhere: still needs "before".
        let moved = vm(
            serde_json::json!({"creationKey": "u", "providerConfig": "before"}),
            serde_json::json!({}),
        );
        assert!(needs(&moved, "before") && !needs(&moved, "now"));
        // Intent recorded, status not written yet: needs the spec's account.
        let intent = vm(
            serde_json::json!({}),
            serde_json::json!({ANNOTATION_CREATION_INTENT: "{}"}),
        );
        assert!(needs(&intent, "now"));
    }
}
