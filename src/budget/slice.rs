//! One gateway replica's share of a budget period: the slices it took from the ledger (`granted`), what
//! it served (`used`) and what requests in flight hold (`reserved`). A request is admitted only when its
//! whole reservation fits in what this replica holds, so the sum over replicas never passes what the
//! ledger granted, and the ledger never grants past the allocation.

use super::period::Window;

/// A replica's share of one budget period.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slice {
    /// The period.
    pub window: Window,
    /// Tokens taken from the ledger for this period and not given back.
    pub granted: i64,
    /// Tokens settled (served).
    pub used: i64,
    /// Tokens held by requests in flight.
    pub reserved: i64,
    /// Unix seconds of the last reservation (an idle slice is given back).
    pub last_use: i64,
}

impl Slice {
    /// An empty share of `window`.
    pub fn new(window: Window) -> Self {
        Self {
            window,
            granted: 0,
            used: 0,
            reserved: 0,
            last_use: 0,
        }
    }

    /// Tokens held and not spoken for (negative when a request used more than it reserved).
    pub fn free(&self) -> i64 {
        self.granted - self.used - self.reserved
    }

    /// Reserves `n` tokens if they fit; otherwise returns how many more this replica must take first.
    pub fn reserve(&mut self, n: i64, now: i64) -> Result<(), i64> {
        let free = self.free();
        if free >= n {
            self.reserved += n;
            self.last_use = now;
            Ok(())
        } else {
            Err(n - free)
        }
    }

    /// Adds a slice taken from the ledger.
    pub fn grant(&mut self, n: i64) {
        self.granted += n;
    }

    /// A request that reserved `reserved` used `used` (what the upstream reported, or the reservation).
    pub fn settle(&mut self, reserved: i64, used: i64) {
        self.reserved -= reserved;
        self.used += used;
    }

    /// Takes back what is held and not spoken for, to return it to the ledger.
    pub fn give_back(&mut self) -> i64 {
        let n = self.free().max(0);
        self.granted -= n;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_fit_in_what_is_held_and_settle_to_what_was_used() {
        let mut s = Slice::new(Window { start: 0, end: 10 });
        assert_eq!(s.reserve(100, 1), Err(100));
        s.grant(150);
        assert_eq!(s.reserve(100, 1), Ok(()));
        assert_eq!(s.reserve(100, 1), Err(50));
        s.settle(100, 40);
        assert_eq!((s.used, s.reserved, s.free()), (40, 0, 110));
        assert_eq!(s.reserve(100, 2), Ok(()));
        // What is reserved is never given back; what is free is.
        assert_eq!(s.give_back(), 10);
        assert_eq!(s.granted, 140);
        s.settle(100, 100);
        assert_eq!(s.free(), 0);
        // An upstream that used more than reserved leaves a debt the next slice pays first.
        assert_eq!(s.reserve(5, 3), Err(5));
        s.grant(5);
        s.reserve(5, 3).unwrap();
        s.settle(5, 8);
        assert_eq!(s.free(), -3);
        assert_eq!(s.reserve(1, 4), Err(4));
        assert_eq!(s.give_back(), 0);
    }
}
