//! Per-key rate limits (requests and tokens per minute) as token buckets, held by each replica.

/// A token bucket: `capacity` units, refilled at `capacity` per minute.
#[derive(Clone, Debug)]
pub struct Bucket {
    capacity: f64,
    level: f64,
    at: f64,
}

impl Bucket {
    /// A full bucket of `capacity` per minute, at time `now` (seconds).
    pub fn new(capacity: f64, now: f64) -> Self {
        Self {
            capacity,
            level: capacity,
            at: now,
        }
    }

    /// Takes `n` units at `now` if they are there; otherwise the seconds until they will be.
    pub fn take(&mut self, n: f64, now: f64) -> Result<(), f64> {
        let rate = self.capacity / 60.0;
        self.level = (self.level + (now - self.at).max(0.0) * rate).min(self.capacity);
        self.at = now;
        if self.level >= n {
            self.level -= n;
            Ok(())
        } else {
            Err(((n - self.level) / rate).max(0.001))
        }
    }

    /// Gives back `n` units (a request refused after taking them).
    pub fn give(&mut self, n: f64) {
        self.level = (self.level + n).min(self.capacity);
    }

    /// Its capacity.
    pub fn capacity(&self) -> f64 {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_capacity_then_refills_per_minute() {
        let mut b = Bucket::new(60.0, 0.0);
        for _ in 0..60 {
            b.take(1.0, 0.0).unwrap();
        }
        let wait = b.take(1.0, 0.0).unwrap_err();
        assert!((wait - 1.0).abs() < 1e-9, "{wait}");
        b.take(1.0, 1.0).unwrap();
        assert!(b.take(1.0, 1.0).is_err());
        b.give(1.0);
        b.take(1.0, 1.0).unwrap();
        // A request larger than the bucket can never pass.
        assert!(Bucket::new(10.0, 0.0).take(11.0, 1e9).is_err());
    }
}
