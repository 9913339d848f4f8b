//! Private networks (VPCs) a Project owns: what Quartermaster asks a vendor to make, how it names them,
//! and what it reads back.
//!
//! - A Project's VPC is named after the Project's UID and the region ([`vpc_name`]): DigitalOcean's
//!   `name`, Linode's `label`, Vultr's `description`. Before any create, the account's VPCs are listed
//!   and one of that exact name is taken as the earlier attempt's, so a crash or a lost answer never
//!   makes a second; no other VPC is ever read as the Project's.
//! - An IPv4 range is optional ([`parse_cidr`] checks it): DigitalOcean and Vultr pick one when none is
//!   given; Linode's VPC gets one subnet ([`LINODE_DEFAULT_SUBNET`] by default), which its servers join.
//! - VPCs cost nothing at these vendors, so nothing here is metered.

/// A VPC at the vendor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vpc {
    /// The vendor's ID.
    pub id: String,
    /// Its name (label, description).
    pub name: String,
    /// Region slug.
    pub region: String,
    /// IPv4 range in CIDR form, where the vendor reports one.
    pub ip_range: Option<String>,
}

/// What to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VpcSpec {
    /// [`vpc_name`].
    pub name: String,
    /// Region slug.
    pub region: String,
    /// IPv4 range in CIDR form; `None`: the vendor's choice.
    pub ip_range: Option<String>,
}

/// The range of the one subnet of a Linode VPC made without `ipRange`.
pub const LINODE_DEFAULT_SUBNET: &str = "10.0.0.0/24";

/// The longest name every vendor takes (Linode's label: 64).
const MAX_NAME: usize = 64;

/// The name of Project `project_uid`'s VPC in `region`: `qm-<uid>-<region>`, ASCII letters, digits
/// and single hyphens only (Linode's label rules, which DigitalOcean's names also meet), at most 64
/// characters.
pub fn vpc_name(project_uid: &str, region: &str) -> String {
    let raw = format!("qm-{project_uid}-{region}").to_ascii_lowercase();
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        let c = if c.is_ascii_alphanumeric() { c } else { '-' };
        if !(c == '-' && out.ends_with('-')) {
            out.push(c);
        }
    }
    let cut: String = out.chars().take(MAX_NAME).collect();
    cut.trim_end_matches('-').to_string()
}

/// An IPv4 range in CIDR form (`10.20.0.0/16`) as address and prefix length, refused unless it is in
/// private address space (RFC 1918) and the prefix is 8–29 bits.
pub fn parse_cidr(range: &str) -> Result<(std::net::Ipv4Addr, u8), String> {
    let bad = || format!("ipRange {range:?} is not an IPv4 range like 10.20.0.0/16");
    let (addr, len) = range.split_once('/').ok_or_else(bad)?;
    let addr: std::net::Ipv4Addr = addr.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    if !(8..=29).contains(&len) {
        return Err(format!(
            "ipRange {range:?}: the prefix must be 8 to 29 bits"
        ));
    }
    if !addr.is_private() {
        return Err(format!(
            "ipRange {range:?} is not private address space (10/8, 172.16/12, 192.168/16)"
        ));
    }
    Ok((addr, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_every_vendor_and_name_the_project_and_region() {
        let uid = "0f6b3a55-1c53-4bd1-9c39-d2e8f8d1b1aa";
        assert_eq!(
            vpc_name(uid, "nyc3"),
            "qm-0f6b3a55-1c53-4bd1-9c39-d2e8f8d1b1aa-nyc3"
        );
        let long = vpc_name(uid, "Some Region__With--Odd..Characters-and-more-and-more");
        assert!(long.len() <= 64, "{long}");
        assert!(!long.contains("--") && !long.ends_with('-'), "{long}");
        assert!(
            long.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "{long}"
        );
        assert_ne!(vpc_name(uid, "nyc1"), vpc_name(uid, "nyc3"));
    }

    #[test]
    fn ranges_must_be_private_ipv4_cidrs() {
        assert_eq!(
            parse_cidr("10.20.0.0/16"),
            Ok(("10.20.0.0".parse().unwrap(), 16))
        );
        assert!(parse_cidr("192.168.10.0/24").is_ok());
        for bad in [
            "10.0.0.0",
            "8.8.8.0/24",
            "10.0.0.0/30",
            "10.0.0.0/4",
            "x/16",
            "10.0.0.0/ab",
        ] {
            assert!(parse_cidr(bad).is_err(), "{bad}");
        }
    }
}
