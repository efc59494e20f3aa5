//! State kept across reloads (rate-limit counters, fetched key sets, Redis
//! connections, access-log writers): found again by key while some compiled
//! configuration still holds it, and let go with the last snapshot that
//! used it.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, Weak};

/// Values by key, held weakly: the compiled policies own them.
pub struct KeptWhileUsed<K, V> {
    by_key: Mutex<HashMap<K, Weak<V>>>,
}

impl<K, V> Default for KeptWhileUsed<K, V> {
    fn default() -> Self {
        KeptWhileUsed {
            by_key: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq, V> KeptWhileUsed<K, V> {
    /// The value kept under `key`, or the one `make` builds now; the flag
    /// says it was built now (so its background task, if any, must start).
    pub fn get_or_make<E>(
        &self,
        key: K,
        make: impl FnOnce() -> Result<V, E>,
    ) -> Result<(Arc<V>, bool), E> {
        let mut by_key = crate::lock(&self.by_key);
        by_key.retain(|_, kept| kept.strong_count() > 0);
        if let Some(kept) = by_key.get(&key).and_then(Weak::upgrade) {
            return Ok((kept, false));
        }
        let made = Arc::new(make()?);
        by_key.insert(key, Arc::downgrade(&made));
        Ok((made, true))
    }

    /// Every value still in use.
    pub fn live(&self) -> Vec<Arc<V>> {
        crate::lock(&self.by_key)
            .values()
            .filter_map(Weak::upgrade)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_kept_while_held_and_made_anew_after() {
        let kept = KeptWhileUsed::<&str, u32>::default();
        let (a, fresh) = kept.get_or_make("a", || Ok::<_, ()>(1)).unwrap();
        assert!(fresh);
        let (again, fresh) = kept.get_or_make("a", || Ok::<_, ()>(2)).unwrap();
        assert!(!fresh && Arc::ptr_eq(&a, &again) && *again == 1);
        assert_eq!(kept.get_or_make("b", || Err("no")).err(), Some("no"));
        assert_eq!(kept.live().len(), 1);
        drop((a, again));
        assert!(kept.live().is_empty());
        let (made, fresh) = kept.get_or_make("a", || Ok::<_, ()>(3)).unwrap();
        assert!(fresh && *made == 3);
    }
}
