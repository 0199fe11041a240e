//! A bounded cache of verified tokens, keyed by the SHA-256 of the token, so a repeat
//! costs a hash and a lookup instead of a signature verification.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

/// Verified tokens, oldest evicted first once `max` is reached.
#[derive(Debug)]
pub struct TokenCache<V> {
    map: HashMap<[u8; 32], Rc<V>>,
    order: VecDeque<[u8; 32]>,
    max: usize,
}

impl<V> TokenCache<V> {
    /// An empty cache holding at most `max` tokens (at least one).
    pub fn new(max: usize) -> Self {
        TokenCache {
            map: HashMap::new(),
            order: VecDeque::new(),
            max: max.max(1),
        }
    }

    /// The entry for a token hash.
    pub fn get(&self, hash: &[u8; 32]) -> Option<Rc<V>> {
        self.map.get(hash).cloned()
    }

    /// Stores an entry, evicting the oldest ones when full.
    pub fn insert(&mut self, hash: [u8; 32], value: Rc<V>) {
        if self.map.insert(hash, value).is_some() {
            return;
        }
        self.order.push_back(hash);
        while self.map.len() > self.max {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
    }

    /// Forgets an entry (a token found expired).
    pub fn remove(&mut self, hash: &[u8; 32]) {
        if self.map.remove(hash).is_some() {
            self.order.retain(|h| h != hash);
        }
    }

    /// Forgets everything (the keys changed).
    pub fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
    }

    /// Number of cached tokens.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_is_bounded_and_evicts_the_oldest_first() {
        let mut cache = TokenCache::new(2);
        cache.insert([1; 32], Rc::new(1));
        cache.insert([2; 32], Rc::new(2));
        cache.insert([1; 32], Rc::new(1));
        cache.insert([3; 32], Rc::new(3));
        assert_eq!(cache.len(), 2);
        assert!(cache.get(&[1; 32]).is_none());
        assert_eq!(cache.get(&[3; 32]).as_deref(), Some(&3));
        cache.remove(&[3; 32]);
        assert_eq!(cache.len(), 1);
        cache.clear();
        assert!(cache.is_empty());
    }
}
