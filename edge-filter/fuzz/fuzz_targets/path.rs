//! Bypass paths: whatever a client sends, a path bypassed under a prefix rule must, once
//! normalised again by anyone, still be under that prefix, and normalising is stable.
#![no_main]

use edge_filter::request::{is_bypassed, normalize_path};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let rules = vec!["/public/*".to_owned(), "/health".to_owned()];
    let Some(normal) = normalize_path(path) else {
        assert!(!is_bypassed(&rules, path), "{path:?} has no meaning yet bypasses");
        return;
    };
    // A normal form is its own normal form: no second decoding changes what it names.
    assert_eq!(normalize_path(&normal).as_deref(), Some(normal.as_str()), "{path:?}");
    assert!(normal.starts_with('/'));
    assert!(!normal.contains("//") && !normal.contains("/./") && !normal.contains("/../"));
    assert!(!normal.ends_with("/.") && !normal.ends_with("/.."));
    if is_bypassed(&rules, path) {
        assert!(normal.starts_with("/public/") || normal == "/health", "{path:?} -> {normal}");
    }
});
