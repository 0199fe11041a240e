//! A bounded cache of verified tokens, so a repeat costs a lookup instead of a signature
//! verification.
//!
//! Short tokens (EdDSA, a few hundred bytes) are keyed by their length and last bytes
//! (signature bytes) and compared in full on a hit: a compare costs less than hashing
//! the token on every request. Long ones (ML-DSA-65, about 4.4 KB) are keyed by their
//! SHA-256, so an entry never holds kilobytes. Either way a hit means "this exact token
//! was verified".

// Reads untrusted request input and feed bytes: no input may panic the VM.
#![deny(clippy::indexing_slicing, clippy::unwrap_used)]

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use shared::sha256;

/// Tokens up to this length are stored whole (and compared on a hit).
pub(crate) const SHORT_TOKEN_MAX: usize = 1024;

/// Where a token is looked up: computed once per request, then used to get, insert or
/// remove (a long token is hashed once).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Key([u8; 32]);

/// The key of a token: `[0, len, last 29 bytes]` when short, its SHA-256 with the first
/// byte set to 1 when long (so the two kinds never meet).
pub(crate) fn key_of(token: &str) -> Key {
    let bytes = token.as_bytes();
    if bytes.len() <= SHORT_TOKEN_MAX {
        let mut key = [0u8; 32];
        key[1..3].copy_from_slice(&(bytes.len() as u16).to_be_bytes());
        // The last (up to) 29 bytes, right-aligned.
        for (k, &b) in key.iter_mut().rev().zip(bytes.iter().rev().take(29)) {
            *k = b;
        }
        Key(key)
    } else {
        let mut key = sha256(bytes);
        key[0] = 1;
        Key(key)
    }
}

#[derive(Debug)]
struct Slot<V> {
    /// The whole token when it is short; `None` when the key is its hash.
    token: Option<Box<str>>,
    value: Rc<V>,
}

/// Verified tokens, oldest evicted first once `max` is reached.
#[derive(Debug)]
pub(crate) struct TokenCache<V> {
    map: HashMap<Key, Slot<V>>,
    order: VecDeque<Key>,
    max: usize,
}

impl<V> TokenCache<V> {
    /// An empty cache holding at most `max` tokens (at least one).
    pub(crate) fn new(max: usize) -> Self {
        TokenCache {
            map: HashMap::new(),
            order: VecDeque::new(),
            max: max.max(1),
        }
    }

    /// The entry for this exact token (`key` is [`key_of`] it).
    pub(crate) fn get(&self, key: &Key, token: &str) -> Option<Rc<V>> {
        let slot = self.map.get(key)?;
        match &slot.token {
            Some(stored) if **stored != *token => None,
            _ => Some(Rc::clone(&slot.value)),
        }
    }

    /// Stores an entry (replacing one with the same key), evicting the oldest when full.
    pub(crate) fn insert(&mut self, key: Key, token: &str, value: Rc<V>) {
        let slot = Slot {
            token: (token.len() <= SHORT_TOKEN_MAX).then(|| token.into()),
            value,
        };
        if self.map.insert(key, slot).is_some() {
            return;
        }
        self.order.push_back(key);
        while self.map.len() > self.max {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
    }

    /// Forgets a token (found expired).
    pub(crate) fn remove(&mut self, key: &Key) {
        if self.map.remove(key).is_some() {
            self.order.retain(|k| k != key);
        }
    }

    /// Forgets everything (the keys changed).
    pub(crate) fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
    }

    /// Number of cached tokens.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// True when nothing is cached.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_is_bounded_and_evicts_the_oldest_first() {
        let mut cache = TokenCache::new(2);
        cache.insert(key_of("a.b.1"), "a.b.1", Rc::new(1));
        cache.insert(key_of("a.b.2"), "a.b.2", Rc::new(2));
        cache.insert(key_of("a.b.1"), "a.b.1", Rc::new(1));
        cache.insert(key_of("a.b.3"), "a.b.3", Rc::new(3));
        assert_eq!(cache.len(), 2);
        assert!(cache.get(&key_of("a.b.1"), "a.b.1").is_none());
        assert_eq!(cache.get(&key_of("a.b.3"), "a.b.3").as_deref(), Some(&3));
        cache.remove(&key_of("a.b.3"));
        assert_eq!(cache.len(), 1);
        cache.clear();
        assert!(cache.is_empty());
    }

    #[test]
    fn a_short_token_hits_only_when_equal_in_full() {
        let mut cache = TokenCache::new(10);
        let token = format!("header.payload.{}", "s".repeat(86));
        cache.insert(key_of(&token), &token, Rc::new(1));
        assert_eq!(cache.get(&key_of(&token), &token).as_deref(), Some(&1));
        // Same length, same last bytes, another payload: the key matches, the token not.
        let forged = token.replacen("payload", "PAYLOAD", 1);
        assert!(cache.get(&key_of(&forged), &forged).is_none());
        // Once verified itself it takes the slot over; the first one then misses.
        cache.insert(key_of(&forged), &forged, Rc::new(2));
        assert_eq!(cache.get(&key_of(&forged), &forged).as_deref(), Some(&2));
        assert!(cache.get(&key_of(&token), &token).is_none());
    }

    #[test]
    fn long_tokens_are_keyed_by_their_hash_and_never_meet_short_ones() {
        let mut cache = TokenCache::new(10);
        let long = "x".repeat(SHORT_TOKEN_MAX + 1);
        let other = format!("y{}", &long[1..]);
        cache.insert(key_of(&long), &long, Rc::new(1));
        assert_eq!(cache.get(&key_of(&long), &long).as_deref(), Some(&1));
        assert!(cache.get(&key_of(&other), &other).is_none());
        assert!(
            cache
                .get(&key_of(&long[..SHORT_TOKEN_MAX]), &long[..SHORT_TOKEN_MAX])
                .is_none()
        );
        assert_ne!(key_of(&long).0[0], key_of("short").0[0]);
    }
}
