//! What each kind remembers in this process (listings, sightings, rate windows, indexes), kept by the
//! runtime without knowing it: one value per type, made on first use, and told when an object is gone.
//!
//! # Guarantees
//! - One value per type per [`Context`](super::Context): every reconcile of every kind that asks for `T`
//!   gets the same `Arc<T>`.
//! - When an object is deleted ([`States::forget`]), every value is told, so no kind's memory of gone
//!   objects grows without bound, and no kind has to be named by the runtime to be told.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Per-process state of a kind (or of a service several kinds share).
pub trait KindState: Send + Sync + 'static {
    /// Forgets what is remembered of a deleted object (`key` as
    /// [`object_key`](super::framework::object_key), and its UID). Default: nothing to forget.
    fn forget(&self, _key: &str, _uid: Option<&str>) {}
}

struct Entry {
    value: Arc<dyn Any + Send + Sync>,
    forget: Arc<dyn KindState>,
}

/// Every kind's state, by type.
#[derive(Default)]
pub struct States {
    map: Mutex<HashMap<TypeId, Entry>>,
}

impl States {
    /// The one value of type `T` (made with `Default` on first use).
    pub fn get<T: KindState + Default>(&self) -> Arc<T> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map.entry(TypeId::of::<T>()).or_insert_with(|| {
            let value = Arc::new(T::default());
            Entry {
                value: value.clone(),
                forget: value,
            }
        });
        entry
            .value
            .clone()
            .downcast::<T>()
            .unwrap_or_else(|_| unreachable!("states are keyed by their type"))
    }

    /// Tells every state that an object is gone.
    pub fn forget(&self, key: &str, uid: Option<&str>) {
        let all: Vec<Arc<dyn KindState>> = {
            let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            map.values().map(|e| e.forget.clone()).collect()
        };
        for s in all {
            s.forget(key, uid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Seen(Mutex<Vec<String>>);
    impl KindState for Seen {
        fn forget(&self, key: &str, _uid: Option<&str>) {
            self.0.lock().unwrap().retain(|k| k != key);
        }
    }

    #[derive(Default)]
    struct Other(Mutex<u32>);
    impl KindState for Other {}

    #[test]
    fn one_value_per_type_and_every_one_is_told_of_a_deletion() {
        let states = States::default();
        states.get::<Seen>().0.lock().unwrap().push("ns/a".into());
        states.get::<Seen>().0.lock().unwrap().push("ns/b".into());
        *states.get::<Other>().0.lock().unwrap() += 1;
        assert_eq!(states.get::<Seen>().0.lock().unwrap().len(), 2);
        assert_eq!(*states.get::<Other>().0.lock().unwrap(), 1);
        states.forget("ns/a", None);
        assert_eq!(*states.get::<Seen>().0.lock().unwrap(), ["ns/b"]);
        assert_eq!(*states.get::<Other>().0.lock().unwrap(), 1);
    }
}
