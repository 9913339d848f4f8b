//! A SimMessage's decide steps, pure: whether a message is already sent (and whether its spec changed
//! since), and, after an attempt whose answer was lost, whether 1NCE's list shows it sent, it may still
//! show up, or it never reached 1NCE and is sent again. Table-tested below.

use crate::crd::SimMessageStatus;
use crate::crd::conditions::{Health, reason};

/// How long an attempt whose answer was lost is given to show in 1NCE's list before it is sent again.
pub const ATTEMPT_SETTLES: i64 = 60;

/// A sent message's health: Ready, or Stalled when its spec changed after it was sent (it is never sent
/// again). `None`: not sent yet.
pub fn already_sent(st: &SimMessageStatus, generation: Option<i64>) -> Option<Health> {
    let at = st.sent_at.as_deref()?;
    Some(if st.sent_generation == generation {
        Health::ready(format!("sent at {at}"))
    } else {
        Health::stalled(
            reason::IMMUTABLE_FIELD_CHANGED,
            format!(
                "this message was sent at {at}; a sent message is not sent again: create another SimMessage"
            ),
        )
    })
}

/// What to do about the message, given the last attempt (`attempted_at`, unix seconds), whether
/// 1NCE's list shows it since, and now.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// 1NCE lists it: it was sent.
    Sent,
    /// Too soon to tell: look again.
    Wait,
    /// Never attempted, or the attempt never reached 1NCE: send (recording the attempt first).
    Send,
}

/// The step after an attempt.
pub fn after_attempt(attempted_at: Option<i64>, listed: bool, now: i64) -> Next {
    match attempted_at {
        Some(_) if listed => Next::Sent,
        Some(at) if now - at < ATTEMPT_SETTLES => Next::Wait,
        _ => Next::Send,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attempt_is_looked_up_before_anything_is_sent_again() {
        // (attempted at, listed, now) → next
        let rows = [
            (None, false, 100, Next::Send),
            (Some(100), true, 100, Next::Sent),
            (Some(100), true, 10_000, Next::Sent),
            (Some(100), false, 100, Next::Wait),
            (Some(100), false, 159, Next::Wait),
            (Some(100), false, 160, Next::Send),
            // A clock that went back: still waits rather than sending twice.
            (Some(100), false, 50, Next::Wait),
        ];
        for (at, listed, now, next) in rows {
            assert_eq!(
                after_attempt(at, listed, now),
                next,
                "{at:?} {listed} {now}"
            );
        }
    }

    #[test]
    fn a_sent_message_is_never_sent_again() {
        let mut st = SimMessageStatus::default();
        assert!(already_sent(&st, Some(1)).is_none());
        st.sent_at = Some("2026-12-04T10:00:00Z".into());
        st.sent_generation = Some(1);
        assert!(matches!(
            already_sent(&st, Some(1)),
            Some(Health::Ready { .. })
        ));
        let Some(Health::Stalled { reason, .. }) = already_sent(&st, Some(2)) else {
            panic!("an edited sent message must stall")
        };
        assert_eq!(reason, reason::IMMUTABLE_FIELD_CHANGED);
    }
}
