//! A VM joining the VPC its Project owns (`spec.projectVPC`), read from the Project in the watch cache:
//! the entry for the VM's account (ProviderConfig) and region in the Project's `status.vpcs`.
//!
//! - Only the VM's own Project (same namespace, `spec.projectRef`) is read, so a VM never joins another
//!   tenant's network; the Project's own VPC needs no `vendorResources` grant.
//! - A Project that declares no VPC there is the user's to fix (`Stalled` `InvalidSpec`); one that
//!   declares it but has not made it yet is waited for (`WaitingForVPC`; the Project's status change
//!   wakes its members).

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use crate::controller::{Context, Error};
use crate::crd::conditions::reason;
use crate::crd::{Project, VirtualMachine};

/// The ID of the Project's VPC the VM joins in account `provider_config`; `None` when it joins none.
pub fn vpc_id(
    ctx: &Context,
    vm: &VirtualMachine,
    provider_config: &str,
) -> Result<Option<String>, Error> {
    if !vm.spec.project_vpc {
        return Ok(None);
    }
    let invalid = |m: String| Error::permanent(reason::INVALID_SPEC, m);
    if vm.spec.vpc_id.is_some() {
        return Err(invalid(
            "spec.vpcID and spec.projectVPC name two networks: keep one".into(),
        ));
    }
    let Some(pref) = &vm.spec.project_ref else {
        return Err(invalid(
            "spec.projectVPC joins the Project's VPC, and spec.projectRef names no Project".into(),
        ));
    };
    let ns = vm.namespace().unwrap_or_default();
    let project = ctx
        .caches()?
        .store::<Project>()?
        .get(&ObjectRef::new(&pref.name).within(&ns))
        .ok_or_else(|| Error::Waiting {
            reason: reason::PROJECT_NOT_FOUND,
            message: format!("Project {:?} does not exist (yet)", pref.name),
        })?;
    pick(&project, provider_config, &vm.spec.region)
}

/// The entry of `project` for `provider_config` and `region`: recorded, declared but not made yet
/// (waiting), or not declared (invalid).
fn pick(project: &Project, provider_config: &str, region: &str) -> Result<Option<String>, Error> {
    let name = project.name_any();
    let recorded = project.status.as_ref().and_then(|s| {
        s.vpcs
            .iter()
            .find(|v| v.provider_config == provider_config && v.region == region)
    });
    if let Some(v) = recorded {
        return Ok(Some(v.id.clone()));
    }
    let declared = project
        .spec
        .vpcs
        .iter()
        .any(|v| v.provider_config_ref.name == provider_config && v.region == region);
    if declared {
        return Err(Error::Waiting {
            reason: reason::WAITING_FOR_VPC,
            message: format!(
                "waiting for Project {name:?} to make its VPC in ProviderConfig {provider_config:?}, region {region:?}"
            ),
        });
    }
    Err(Error::permanent(
        reason::INVALID_SPEC,
        format!(
            "spec.projectVPC: Project {name:?} declares no VPC in ProviderConfig {provider_config:?}, region {region:?} (its spec.vpcs)"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(spec_vpcs: serde_json::Value, status_vpcs: serde_json::Value) -> Project {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "quartermaster.dev/v1alpha1", "kind": "Project",
            "metadata": {"name": "acme", "namespace": "team-a", "uid": "p-1"},
            "spec": {"currency": "USD", "vpcs": spec_vpcs},
            "status": {"vpcs": status_vpcs}
        }))
        .unwrap()
    }

    #[test]
    fn a_vm_joins_only_the_vpc_its_project_made_in_its_account_and_region() {
        let declared = serde_json::json!([{"providerConfigRef": {"name": "do"}, "region": "nyc1"}]);
        let made = serde_json::json!([{"providerConfig": "do", "region": "nyc1", "id": "v-1", "name": "qm-p-1-nyc1"}]);
        let p = project(declared.clone(), made);
        assert_eq!(pick(&p, "do", "nyc1").unwrap().as_deref(), Some("v-1"));
        // Declared, not made yet: waited for.
        let waiting = project(declared, serde_json::json!([]));
        assert!(matches!(
            pick(&waiting, "do", "nyc1"),
            Err(Error::Waiting {
                reason: reason::WAITING_FOR_VPC,
                ..
            })
        ));
        // Another region or account: not declared, the user's to fix.
        for (pc, region) in [("do", "ams3"), ("other", "nyc1")] {
            let e = pick(&p, pc, region).unwrap_err();
            assert!(e.is_permanent(), "{e}");
            assert!(e.to_string().contains("declares no VPC"), "{e}");
        }
    }
}
