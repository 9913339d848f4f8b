//! Plans: what a Subscription's `plan` (or raw `priceID`) means in its Stripe account's ProviderConfig —
//! the recurring price, the metered prices of usage billed through Stripe, and the entitlements.

use crate::crd::provider_config::{Plan, PlanEntitlements};
use crate::crd::{ProviderConfig, SubscriptionSpec};

/// What a Subscription asks Stripe for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    /// The plan's name, or the raw price ID.
    pub label: String,
    /// The recurring (licensed) price.
    pub price: String,
    /// The metered prices added beside it.
    pub metered: Vec<String>,
    /// What it entitles (nothing for a raw price).
    pub entitlements: Option<PlanEntitlements>,
}

/// The plan `name` of a ProviderConfig, if it declares it.
pub fn find<'a>(pc: &'a ProviderConfig, name: &str) -> Option<&'a Plan> {
    pc.spec.plans.iter().find(|p| p.name == name)
}

/// What `spec` asks for in `pc`'s account; `Err` names the known plans when the plan is unknown.
pub fn wanted(spec: &SubscriptionSpec, pc: &ProviderConfig) -> Result<Wanted, String> {
    match (&spec.plan, &spec.price_id) {
        (Some(name), None) => {
            let Some(p) = find(pc, name) else {
                let known: Vec<&str> = pc.spec.plans.iter().map(|p| p.name.as_str()).collect();
                return Err(if known.is_empty() {
                    format!(
                        "unknown plan {name:?}: the ProviderConfig declares no plans (spec.plans)"
                    )
                } else {
                    format!("unknown plan {name:?}; known plans: {}", known.join(", "))
                });
            };
            Ok(Wanted {
                label: p.name.clone(),
                price: p.price_id.clone(),
                metered: p.metered.iter().map(|m| m.price_id.clone()).collect(),
                entitlements: p.entitlements.clone(),
            })
        }
        (None, Some(price)) => Ok(Wanted {
            label: price.clone(),
            price: price.clone(),
            metered: Vec::new(),
            entitlements: None,
        }),
        _ => Err("set exactly one of spec.plan and spec.priceID".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::provider_config::MeteredPrice;

    fn pc(plans: Vec<Plan>) -> ProviderConfig {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "quartermaster.dev/v1alpha1", "kind": "ProviderConfig",
            "metadata": {"name": "stripe"},
            "spec": {"type": "stripe", "credentialsSecretRef": {"name": "s", "namespace": "n"},
                     "plans": plans},
        }))
        .unwrap()
    }

    fn spec(plan: Option<&str>, price: Option<&str>) -> SubscriptionSpec {
        serde_json::from_value(serde_json::json!({
            "plan": plan, "priceID": price, "providerConfigRef": {"name": "stripe"},
        }))
        .unwrap()
    }

    #[test]
    fn a_plan_names_its_prices_and_an_unknown_one_lists_the_known() {
        let p = pc(vec![
            Plan {
                name: "basic".into(),
                price_id: "price_basic".into(),
                metered: vec![MeteredPrice {
                    meter: "vm_seconds".into(),
                    price_id: "price_vm_hours".into(),
                    event_name: "vm_hours".into(),
                    divisor: 3600,
                }],
                entitlements: None,
            },
            Plan {
                name: "pro".into(),
                price_id: "price_pro".into(),
                ..Default::default()
            },
        ]);
        let w = wanted(&spec(Some("basic"), None), &p).unwrap();
        assert_eq!(w.price, "price_basic");
        assert_eq!(w.metered, ["price_vm_hours"]);
        let e = wanted(&spec(Some("gold"), None), &p).unwrap_err();
        assert!(e.contains("basic, pro"), "{e}");
        let raw = wanted(&spec(None, Some("price_x")), &p).unwrap();
        assert_eq!(
            (raw.label.as_str(), raw.price.as_str()),
            ("price_x", "price_x")
        );
        assert!(wanted(&spec(None, None), &p).is_err());
        assert!(
            wanted(&spec(Some("gold"), None), &pc(vec![]))
                .unwrap_err()
                .contains("no plans")
        );
    }
}
