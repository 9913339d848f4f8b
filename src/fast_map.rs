//! The map type of what a gateway request looks up in memory (keys, budgets, upstreams, models,
//! usage groups): the standard `HashMap` with foldhash, seeded per map, which hashes short keys
//! several times faster than the standard library's SipHash. Its keys come from cluster objects and
//! from hashes of API keys, never from a request's body.

/// A `HashMap` hashed with foldhash.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// The hasher [`FastMap`] uses, for a hash of one's own.
pub type FastState = foldhash::fast::RandomState;
