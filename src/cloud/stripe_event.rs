//! Stripe's webhook events as the controller reads them: which Subscription an event concerns (a hint
//! for waking it; its reconcile reads Stripe itself) and which event types matter. The webhook server
//! verifies and parses them; the controller receives the hints.

/// Which Subscription a Stripe event concerns: the object's UID from the Stripe object's metadata, its
/// subscription ID, its customer ID (whatever the event carries).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StripeHint {
    /// `metadata.quartermaster_uid` of the subscription.
    pub uid: Option<String>,
    /// `sub_…`.
    pub subscription: Option<String>,
    /// `cus_…`.
    pub customer: Option<String>,
}

/// The event types that wake a Subscription (others are answered 200 and ignored).
pub const STRIPE_EVENTS: &[&str] = &[
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "customer.subscription.paused",
    "customer.subscription.resumed",
    "invoice.paid",
    "invoice.payment_failed",
    "invoice.payment_succeeded",
    "invoice.finalized",
];

/// Parses a verified event body: (event ID, type, hint). `Err` for a body that is not an event.
pub fn parse_stripe_event(body: &[u8]) -> Result<(String, String, StripeHint), &'static str> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|_| "the body is not JSON")?;
    let id = v["id"]
        .as_str()
        .filter(|i| i.starts_with("evt_") && i.len() <= 255);
    let kind = v["type"]
        .as_str()
        .filter(|t| !t.is_empty() && t.len() <= 255);
    let (Some(id), Some(kind)) = (id, kind) else {
        return Err("not a Stripe event (no evt_ id or type)");
    };
    let o = &v["data"]["object"];
    let text = |x: &serde_json::Value| {
        x.as_str()
            .or_else(|| x["id"].as_str())
            .filter(|s| s.len() <= 255)
            .map(str::to_string)
    };
    let key = super::stripe::UID_KEY;
    let hint = if kind.starts_with("customer.subscription.") {
        StripeHint {
            uid: text(&o["metadata"][key]),
            subscription: text(&o["id"]),
            customer: text(&o["customer"]),
        }
    } else {
        StripeHint {
            uid: text(&o["subscription_details"]["metadata"][key]),
            subscription: text(&o["subscription"]),
            customer: text(&o["customer"]),
        }
    };
    Ok((id.to_string(), kind.to_string(), hint))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_name_their_subscription_and_anything_else_is_refused() {
        let sub = br#"{"id":"evt_1","type":"customer.subscription.updated","data":{"object":
            {"id":"sub_1","customer":"cus_1","metadata":{"quartermaster_uid":"u-1"}}}}"#;
        let (id, kind, h) = parse_stripe_event(sub).unwrap();
        assert_eq!(
            (id.as_str(), kind.as_str()),
            ("evt_1", "customer.subscription.updated")
        );
        assert_eq!(h.uid.as_deref(), Some("u-1"));
        assert_eq!(h.subscription.as_deref(), Some("sub_1"));
        let inv = br#"{"id":"evt_2","type":"invoice.paid","data":{"object":{"id":"in_1",
            "subscription":"sub_1","customer":{"id":"cus_1"}}}}"#;
        let (_, _, h) = parse_stripe_event(inv).unwrap();
        assert_eq!(
            (h.subscription.as_deref(), h.customer.as_deref()),
            (Some("sub_1"), Some("cus_1"))
        );
        for bad in [
            &b"not json"[..],
            b"{}",
            br#"{"id":"x","type":"a"}"#,
            b"[1,2]",
            b"\xff\xfe",
        ] {
            assert!(parse_stripe_event(bad).is_err());
        }
    }

    #[test]
    fn any_body_is_parsed_without_panicking() {
        let mut seed = 7u64;
        for n in 0..2000 {
            let len = n % 300;
            let body: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let alphabet = b"{}[]\":,evt_typedaobjc 0123";
                    alphabet[(seed >> 33) as usize % alphabet.len()]
                })
                .collect();
            let _ = parse_stripe_event(&body);
        }
    }
}
