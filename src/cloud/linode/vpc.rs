//! A Linode joining a VPC: Linode attaches a server to a VPC through a `vpc` interface on one of the
//! VPC's subnets, given at create.
//!
//! - `spec.vpcID` names the VPC (what the ProviderConfig grants); `spec.subnetID` one of its subnets,
//!   needed only when the VPC has more than one. The subnet is looked up among the VPC's own
//!   ([`Linode::vpc_subnet`]), so a subnet of another VPC (another tenant's network) is refused, not
//!   joined.
//! - The public interface comes first (eth0) so the server stays reachable at its public addresses,
//!   as without a VPC; the VPC interface is second.
//! - A Project's VPC ([`crate::cloud::vpc`]) is made with one subnet, which its servers then join.

use reqwest::Method;
use serde::{Deserialize, Serialize};

use super::Linode;
use crate::cloud::CloudError;
use crate::cloud::ServerSpec;
use crate::cloud::rest::{done_if_not_found, not_an_id, numeric_id};
use crate::cloud::vpc::{LINODE_DEFAULT_SUBNET, Vpc, VpcSpec};

/// One interface of a create's `interfaces`.
#[derive(Serialize, Debug, PartialEq, Eq)]
pub(super) struct Interface {
    purpose: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    subnet_id: Option<u64>,
}

/// The interfaces of a server joining `subnet`: public first, then the VPC's.
pub(super) fn interfaces(subnet: u64) -> Vec<Interface> {
    vec![
        Interface {
            purpose: "public",
            subnet_id: None,
        },
        Interface {
            purpose: "vpc",
            subnet_id: Some(subnet),
        },
    ]
}

/// A subnet as Linode lists it.
#[derive(Deserialize)]
struct Subnet {
    id: u64,
    #[serde(default)]
    ipv4: Option<String>,
}

/// A VPC as Linode sends it (its name is its label).
#[derive(Deserialize)]
struct LinodeVpc {
    id: u64,
    #[serde(default)]
    label: String,
    #[serde(default)]
    region: String,
    #[serde(default)]
    subnets: Vec<Subnet>,
}

impl LinodeVpc {
    fn into_vpc(self) -> Vpc {
        Vpc {
            id: self.id.to_string(),
            name: self.label,
            region: self.region,
            ip_range: self.subnets.into_iter().find_map(|s| s.ipv4),
        }
    }
}

/// The subnet to join among `subnets` (the VPC's): `wanted` when it is one of them, else the only one.
fn pick(vpc: u64, subnets: &[u64], wanted: Option<u64>) -> Result<u64, String> {
    match (wanted, subnets) {
        (Some(w), _) if subnets.contains(&w) => Ok(w),
        (Some(w), _) => Err(format!(
            "spec.subnetID {w} is not a subnet of linode VPC {vpc} (its subnets: {subnets:?})"
        )),
        (None, [only]) => Ok(*only),
        (None, []) => Err(format!(
            "linode VPC {vpc} has no subnet: add one at Linode, then create the server"
        )),
        (None, _) => Err(format!(
            "linode VPC {vpc} has subnets {subnets:?}: name the one to join in spec.subnetID"
        )),
    }
}

impl Linode {
    /// The subnet a create joins (`spec.vpcID`, `spec.subnetID`), if it joins a VPC.
    pub(super) async fn subnet_for(&self, spec: &ServerSpec) -> Result<Option<u64>, CloudError> {
        let Some(v) = spec.options.vpc_id.as_deref() else {
            return Ok(None);
        };
        let vpc = v.parse().map_err(|_| not_an_id("linode", v))?;
        let wanted = spec
            .options
            .subnet_id
            .as_deref()
            .and_then(|s| s.parse().ok());
        self.vpc_subnet(vpc, wanted).await.map(Some)
    }

    /// The subnet of VPC `vpc` a new server joins (see [`pick`]); a refusal is
    /// [`CloudError::Unsupported`] with the reason.
    pub(super) async fn vpc_subnet(
        &self,
        vpc: u64,
        wanted: Option<u64>,
    ) -> Result<u64, CloudError> {
        let subnets: Vec<Subnet> = self.list(&format!("/v4/vpcs/{vpc}/subnets")).await?;
        let ids: Vec<u64> = subnets.iter().map(|s| s.id).collect();
        pick(vpc, &ids, wanted).map_err(CloudError::Unsupported)
    }

    /// The account's VPCs labelled `name`.
    pub(super) async fn vpcs_named(&self, name: &str) -> Result<Vec<Vpc>, CloudError> {
        let all: Vec<LinodeVpc> = self.list("/v4/vpcs").await?;
        Ok(all
            .into_iter()
            .filter(|v| v.label == name)
            .map(LinodeVpc::into_vpc)
            .collect())
    }

    /// A VPC with one subnet (`spec.ip_range`, else [`LINODE_DEFAULT_SUBNET`]).
    pub(super) async fn make_vpc(&self, spec: &VpcSpec) -> Result<Vpc, CloudError> {
        let body = serde_json::json!({
            "label": spec.name,
            "region": spec.region,
            "description": "made by Quartermaster for a Project",
            "subnets": [{
                "label": "quartermaster",
                "ipv4": spec.ip_range.as_deref().unwrap_or(LINODE_DEFAULT_SUBNET),
            }],
        });
        let made: LinodeVpc = self
            .api
            .http
            .json(self.req(Method::POST, "/v4/vpcs").json(&body), false)
            .await?;
        Ok(made.into_vpc())
    }

    /// Deletes VPC `id` (and its subnets); gone is done.
    pub(super) async fn remove_vpc(&self, id: &str) -> Result<(), CloudError> {
        let Some(id) = numeric_id(id) else {
            return Ok(());
        };
        let r = self.req(Method::DELETE, &format!("/v4/vpcs/{id}"));
        done_if_not_found(self.api.http.send(r, true).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subnet_is_one_of_the_vpcs_own() {
        assert_eq!(pick(1, &[10, 11], Some(11)), Ok(11));
        assert_eq!(pick(1, &[10], None), Ok(10));
        // Another VPC's subnet is never joined.
        let e = pick(1, &[10, 11], Some(99)).unwrap_err();
        assert!(e.contains("99") && e.contains("not a subnet"), "{e}");
        let e = pick(1, &[10, 11], None).unwrap_err();
        assert!(e.contains("spec.subnetID"), "{e}");
        assert!(pick(1, &[], None).unwrap_err().contains("no subnet"));
        assert!(pick(1, &[], Some(3)).is_err());
    }

    #[test]
    fn the_public_interface_stays_first() {
        let v = serde_json::to_value(interfaces(456)).unwrap();
        assert_eq!(
            v,
            serde_json::json!([{"purpose": "public"}, {"purpose": "vpc", "subnet_id": 456}])
        );
    }
}
