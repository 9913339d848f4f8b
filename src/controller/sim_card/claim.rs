//! Who may claim which SIM (pure): the ICCID's form, the ProviderConfig's `simClaims`, and the one
//! winner among SimCards naming the same ICCID on the same account.
//!
//! - An ICCID is 19 digits, or 20 whose last digit is the Luhn check digit of the first 19 (1NCE lists
//!   both forms); both name the same SIM, compared as the 19 digits.
//! - Without `simClaims`, a SIM is claimable only on a single-tenant account (`allowedNamespaces`
//!   naming exactly one namespace), by that namespace.
//! - The winner among claims of one SIM is the oldest SimCard whose namespace may claim it (creation
//!   time, then UID): a loser re-created later is younger still, so the winner keeps winning across
//!   restarts and re-creations, and a refused claim (a tenant naming another tenant's ICCID first)
//!   blocks no one.

use kube::ResourceExt;

use crate::crd::{ProviderConfig, SimCard};

/// The Luhn check digit of a string of ASCII digits.
pub fn luhn_digit(digits: &str) -> u32 {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b.wrapping_sub(b'0'));
            if i % 2 == 0 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    (10 - sum % 10) % 10
}

/// The 19-digit form of an ICCID, or what is wrong with it.
pub fn normalize(iccid: &str) -> Result<String, String> {
    if !iccid.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("spec.iccid {iccid:?} must be digits only"));
    }
    match iccid.len() {
        19 => Ok(iccid.to_string()),
        20 => {
            let (body, check) = iccid.split_at(19);
            let want = luhn_digit(body);
            if check == want.to_string() {
                Ok(body.to_string())
            } else {
                Err(format!(
                    "spec.iccid {iccid:?} fails its Luhn check: the 20th digit should be {want} (or give the first 19 digits)"
                ))
            }
        }
        n => Err(format!(
            "spec.iccid {iccid:?} has {n} digits: an ICCID has 19, or 20 with the Luhn check digit"
        )),
    }
}

/// Whether `namespace` may claim the SIM `iccid` (19 digits) of this 1NCE account.
pub fn allowed(pc: &ProviderConfig, namespace: &str, iccid: &str) -> bool {
    if pc.spec.sim_claims.is_empty() {
        return pc.spec.allowed_namespaces.len() == 1 && pc.spec.allowed_namespaces[0] == namespace;
    }
    let as19 = |s: &str| normalize(s).ok();
    pc.spec
        .sim_claims
        .iter()
        .filter(|r| r.namespaces.iter().any(|n| n == namespace))
        .any(|r| {
            r.iccids.iter().any(|i| as19(i).as_deref() == Some(iccid))
                || r.ranges.iter().any(|range| {
                    match (as19(&range.first), as19(&range.last)) {
                        // Same length, digits only: text order is numeric order.
                        (Some(a), Some(b)) => a.as_str() <= iccid && iccid <= b.as_str(),
                        _ => false,
                    }
                })
        })
}

/// The SimCard that holds the claim on `iccid` (19 digits) at ProviderConfig `pc` among `all`: of
/// those whose namespace `pc` lets claim it, the oldest, then the smallest UID. `None` when none does.
pub fn winner<'a>(
    all: &'a [std::sync::Arc<SimCard>],
    pc: &ProviderConfig,
    iccid: &str,
) -> Option<&'a SimCard> {
    let name = pc.name_any();
    all.iter()
        .map(|s| &**s)
        // The cheap test first (no allocation): this runs over every SimCard of the cache.
        .filter(|s| {
            s.spec.iccid.get(..19) == Some(iccid)
                && s.spec.provider_config_ref.name == name
                && normalize(&s.spec.iccid).ok().as_deref() == Some(iccid)
                && allowed(pc, &s.namespace().unwrap_or_default(), iccid)
        })
        .min_by(|a, b| {
            let key = |s: &SimCard| (s.metadata.creation_timestamp.clone().map(|t| t.0), s.uid());
            key(a).cmp(&key(b))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn pc(spec: serde_json::Value) -> ProviderConfig {
        let mut base = serde_json::json!({"type": "onence",
            "credentialsSecretRef": {"namespace": "ops", "name": "s", "key": "k"}});
        base.as_object_mut()
            .unwrap()
            .extend(spec.as_object().unwrap().clone());
        serde_json::from_value(serde_json::json!({
            "apiVersion": "quartermaster.dev/v1alpha1", "kind": "ProviderConfig",
            "metadata": {"name": "iot"}, "spec": base}))
        .unwrap()
    }

    fn sim(ns: &str, name: &str, iccid: &str, created: &str, uid: &str) -> Arc<SimCard> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "quartermaster.dev/v1alpha1", "kind": "SimCard",
                "metadata": {"name": name, "namespace": ns, "uid": uid, "creationTimestamp": created},
                "spec": {"iccid": iccid, "providerConfigRef": {"name": "iot"}}}))
            .unwrap(),
        )
    }

    const ICCID: &str = "8988280666000000000";

    #[test]
    fn iccids_are_19_digits_or_20_with_a_valid_luhn_digit() {
        let luhn = format!("{ICCID}{}", luhn_digit(ICCID));
        assert_eq!(normalize(&luhn).unwrap(), ICCID);
        assert_eq!(normalize(ICCID).unwrap(), ICCID);
        let wrong = format!("{ICCID}{}", (luhn_digit(ICCID) + 1) % 10);
        assert!(normalize(&wrong).unwrap_err().contains("Luhn"));
        assert!(normalize("123").unwrap_err().contains("3 digits"));
        assert_eq!(luhn_digit("7992739871"), 3);
    }

    #[test]
    fn claims_need_a_rule_or_a_single_tenant_account() {
        assert!(!allowed(&pc(serde_json::json!({})), "team-a", ICCID));
        let single = pc(serde_json::json!({"allowedNamespaces": ["team-a"]}));
        assert!(allowed(&single, "team-a", ICCID));
        assert!(!allowed(&single, "team-b", ICCID));
        let two = pc(serde_json::json!({"allowedNamespaces": ["team-a", "team-b"]}));
        assert!(!allowed(&two, "team-a", ICCID));
        let rules = pc(serde_json::json!({"simClaims": [
            {"namespaces": ["team-a"], "ranges": [{"first": "8988280666000000000", "last": "8988280666000000009"}]},
            {"namespaces": ["team-b"], "iccids": ["8988280666000000010"]}]}));
        assert!(allowed(&rules, "team-a", "8988280666000000009"));
        assert!(!allowed(&rules, "team-a", "8988280666000000010"));
        assert!(allowed(&rules, "team-b", "8988280666000000010"));
        assert!(!allowed(&rules, "team-b", ICCID));
    }

    #[test]
    fn the_oldest_claim_wins_whatever_form_the_iccid_takes() {
        let iot = pc(serde_json::json!({"simClaims": [
            {"namespaces": ["a", "b", "c"], "ranges": [{"first": "8988280666000000000", "last": "8988280666000000009"}]}]}));
        let luhn = format!("{ICCID}{}", luhn_digit(ICCID));
        let all = vec![
            sim("b", "late", &luhn, "2026-11-30T10:00:00Z", "u-2"),
            sim("a", "first", ICCID, "2026-11-30T09:00:00Z", "u-9"),
            sim(
                "c",
                "other",
                "8988280666000000001",
                "2026-11-01T00:00:00Z",
                "u-1",
            ),
        ];
        assert_eq!(winner(&all, &iot, ICCID).unwrap().name_any(), "first");
        // Same second: the smaller UID.
        let tie = vec![
            sim("b", "y", ICCID, "2026-11-30T09:00:00Z", "u-2"),
            sim("a", "x", ICCID, "2026-11-30T09:00:00Z", "u-1"),
        ];
        assert_eq!(winner(&tie, &iot, ICCID).unwrap().name_any(), "x");
        let mut other = iot.clone();
        other.metadata.name = Some("other-account".into());
        assert!(winner(&all, &other, ICCID).is_none());
        // A squatter from a namespace that may not claim the SIM, older still, wins nothing.
        let mut squatted = all.clone();
        squatted.push(sim(
            "mallory",
            "squat",
            ICCID,
            "2026-01-01T00:00:00Z",
            "u-0",
        ));
        assert_eq!(winner(&squatted, &iot, ICCID).unwrap().name_any(), "first");
    }
}
