//! Strict JSON for security-relevant objects: duplicate member names are an error.
//!
//! serde_json silently keeps the last of two equal keys, so `{"alg":"EdDSA","alg":"none"}`
//! would mean different things to different parsers. A first pass walks the document and
//! refuses any object that repeats a name; only then is it decoded into its type.

// Parses untrusted input: no input may panic it.
#![deny(clippy::indexing_slicing, clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, MapAccess, SeqAccess, Visitor};

use crate::JoseError;

/// Parses `bytes` as `T`, refusing duplicate members at any depth.
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8], part: &'static str) -> Result<T, JoseError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    NoDuplicates
        .deserialize(&mut de)
        .and_then(|()| de.end())
        .map_err(|e| {
            let reason = e.to_string();
            match reason.strip_prefix("duplicate member ") {
                Some(rest) => JoseError::DuplicateMember(
                    rest.split(" at line").next().unwrap_or(rest).to_owned(),
                ),
                None => JoseError::Json { part, reason },
            }
        })?;
    serde_json::from_slice(bytes).map_err(|e| JoseError::Json {
        part,
        reason: e.to_string(),
    })
}

struct NoDuplicates;

impl<'de> DeserializeSeed<'de> for NoDuplicates {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NoDuplicates {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(NoDuplicates)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = BTreeSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format_args!("duplicate member {key}")));
            }
            map.next_value_seed(NoDuplicates)?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test fails on an unexpected input")]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn duplicate_members_are_refused_at_any_depth() {
        let err = from_slice::<Value>(br#"{"alg":"EdDSA","alg":"none"}"#, "header").unwrap_err();
        assert_eq!(err, JoseError::DuplicateMember("alg".into()));
        assert!(from_slice::<Value>(br#"{"a":[{"b":1,"b":2}]}"#, "x").is_err());
        assert!(from_slice::<Value>(br#"{"a":{"b":1},"c":{"b":2}}"#, "x").is_ok());
    }

    #[test]
    fn trailing_data_and_bad_json_are_refused() {
        assert!(from_slice::<Value>(br#"{"a":1} x"#, "x").is_err());
        assert!(from_slice::<Value>(br#"{"a":"#, "x").is_err());
    }
}
