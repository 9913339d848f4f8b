//! The Secrets the controller writes for an object (a VM's connection details, a TokenBudget's API
//! keys): one shape for all of them — owned by the object (so Kubernetes deletes them with it), and
//! labelled `app.kubernetes.io/managed-by=quartermaster` (so the shared cache watches only these, and
//! they are never taken for credentials).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};

use super::Error;
use crate::crd::conditions::reason;

/// A Secret `name` in `owner`'s namespace holding `data`, owned by `owner`.
pub fn owned_secret<K: Resource<DynamicType = ()>>(
    owner: &K,
    name: &str,
    data: BTreeMap<String, ByteString>,
) -> Result<Secret, Error> {
    let owner_ref = owner
        .controller_owner_ref(&())
        .ok_or_else(|| Error::permanent(reason::INVALID_OBJECT, "object has no uid"))?;
    Ok(Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: owner.namespace(),
            owner_references: Some(vec![owner_ref]),
            labels: Some(
                [(
                    "app.kubernetes.io/managed-by".to_string(),
                    "quartermaster".to_string(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owned_secret_is_owned_labelled_and_never_a_credential() {
        let mut owner = k8s_openapi::api::core::v1::ConfigMap::default();
        owner.metadata.name = Some("web".into());
        owner.metadata.namespace = Some("ns".into());
        assert!(owned_secret(&owner, "web-conn", BTreeMap::new()).is_err());
        owner.metadata.uid = Some("u-1".into());
        let s = owned_secret(&owner, "web-conn", BTreeMap::new()).unwrap();
        assert_eq!(s.namespace().as_deref(), Some("ns"));
        let owners = s.owner_references();
        assert_eq!(
            (owners[0].uid.as_str(), owners[0].controller),
            ("u-1", Some(true))
        );
        let label = super::super::cache::MANAGED_BY_LABEL
            .split_once('=')
            .unwrap();
        assert_eq!(s.labels().get(label.0).map(String::as_str), Some(label.1));
    }
}
