//! Who holds vendor state through which account. Each kind that keeps something at a vendor (a server,
//! a SIM, a Stripe customer, a snapshot) registers, in its wiring, which of its objects hold state
//! through a given ProviderConfig ([`Wiring::holds_accounts`](super::Wiring::holds_accounts)); the
//! ProviderConfig keeps itself and its credentials while any does, without knowing the kind.
//!
//! Answers come from the kinds' watch caches: no API call.

use std::sync::Mutex;

use kube::ResourceExt;
use kube::runtime::reflector::Store;

use super::cache::Watched;
use super::framework::Managed;
use super::state::KindState;

type Holder = Box<dyn Fn(&str) -> Vec<String> + Send + Sync>;

/// The registered kinds' holders (see the module docs).
#[derive(Default)]
pub struct Holders {
    kinds: Mutex<Vec<(&'static str, Holder)>>,
}

impl KindState for Holders {}

impl Holders {
    /// Registers kind `K`: an object in `store` holds state through ProviderConfig `pc` when
    /// `holds(object, pc)`. Registering a kind again replaces it (a new wiring's caches).
    pub fn register<K: Managed + Watched>(&self, store: Store<K>, holds: fn(&K, &str) -> bool) {
        let holder: Holder = Box::new(move |pc| {
            store
                .state()
                .iter()
                .filter(|o| holds(o, pc))
                .map(|o| {
                    format!(
                        "{} {}/{}",
                        K::KIND,
                        o.namespace().unwrap_or_default(),
                        o.name_any()
                    )
                })
                .collect()
        });
        let mut kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        kinds.retain(|(k, _)| *k != K::KIND);
        kinds.push((K::KIND, holder));
    }

    /// The objects (`Kind namespace/name`, sorted) that hold vendor state through ProviderConfig `pc`.
    pub fn of(&self, pc: &str) -> Vec<String> {
        let kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        let mut names: Vec<String> = kinds.iter().flat_map(|(_, h)| h(pc)).collect();
        names.sort();
        names
    }
}
