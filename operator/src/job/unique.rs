//! The Gearman unique keys a Job's attempts are submitted under (pure).
//!
//! The broker coalesces jobs, and keeps their outcomes, by function and unique key, so the key
//! decides which Jobs share one run and one result:
//!
//! * with `spec.unique`, the key is `<namespace>/<spec.unique>`: Jobs of one namespace with the
//!   same `spec.unique` still share a run (that is what the field is for), Jobs of two namespaces
//!   never do;
//! * without it, the Job's UID, which is unique in the whole cluster.
//!
//! Each later attempt or step appends `/<step>/<attempt>` ([`attempt_unique`]). Keys longer than
//! Gearman's 64 bytes keep their beginning and end in a digest of the whole key, so two long keys
//! that differ only past the cut still differ.

/// Longest unique key the broker is given (Gearman's limit).
const UNIQUE_MAX: usize = 64;

/// Length of the digest that ends a key too long to keep whole (`~` and hex digits, at least).
const DIGEST_MIN: usize = 17;

/// The base of a Job's unique keys: `<namespace>/<spec.unique>` when `spec_unique` is set, else
/// the Job's `uid`; `None` when neither is known.
pub fn unique_base(namespace: &str, spec_unique: Option<&str>, uid: Option<&str>) -> Option<String> {
    match spec_unique {
        Some(unique) => Some(format!("{namespace}/{unique}")),
        None => uid.map(str::to_string),
    }
}

/// The unique key of attempt `attempt` (1-based) of step `step`: the Job's base key
/// ([`unique_base`]) for the first attempt of the first step, so that `spec.unique` coalesces;
/// with `/<step>/<attempt>` appended for every other attempt, so that a retry or a later step is a
/// new job for the broker. At most [`UNIQUE_MAX`] bytes.
pub fn attempt_unique(base: &str, step: usize, attempt: i32) -> String {
    if step == 0 && attempt <= 1 {
        return fit(base, UNIQUE_MAX);
    }
    let suffix = format!("/{step}/{attempt}");
    format!("{}{suffix}", fit(base, UNIQUE_MAX - suffix.len()))
}

/// `s` if it has at most `max` bytes, else its beginning, `~` and a digest of all of `s`, `max`
/// bytes in all (fewer only if `max` is too small for a digest).
fn fit(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let head = truncate(s, max.saturating_sub(DIGEST_MIN));
    let digest = digest(s);
    let room = max.saturating_sub(head.len() + 1).min(digest.len());
    format!("{head}~{}", &digest[..room])
}

/// The longest beginning of `s` of at most `max` bytes that ends on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// 32 hex digits: two 64-bit FNV-1a hashes of `s` with different offsets. Stable across builds and
/// Rust versions (unlike `std`'s hasher), so every operator version computes the same key.
fn digest(s: &str) -> String {
    let fnv = |offset: u64| s.bytes().fold(offset, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3));
    format!("{:016x}{:016x}", fnv(0xcbf2_9ce4_8422_2325), fnv(0x6c62_272e_07bb_0142))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0b0c6a4e-5a8e-4a42-9a3e-6f1f4f2d9b10";

    #[test]
    fn spec_unique_is_namespaced_and_coalesces_within_a_namespace() {
        let a = unique_base("team-a", Some("report-2026-03"), Some("uid-1"));
        let b = unique_base("team-b", Some("report-2026-03"), Some("uid-2"));
        let a2 = unique_base("team-a", Some("report-2026-03"), Some("uid-3"));
        assert_eq!(a.as_deref(), Some("team-a/report-2026-03"));
        assert_ne!(a, b, "two namespaces: two keys");
        assert_eq!(a, a2, "one namespace: one key, whatever the Job");
        assert_eq!(unique_base("team-a", None, Some(UID)).as_deref(), Some(UID), "no spec.unique: the UID");
        assert_eq!(unique_base("team-a", None, None), None);
    }

    #[test]
    fn long_keys_stay_distinct_and_fit_gearman() {
        let ns = "n".repeat(63);
        let key = |unique: &str| attempt_unique(&unique_base(&ns, Some(unique), None).expect("base"), 0, 1);
        let (a, b) = (key(&format!("{}a", "u".repeat(63))), key(&format!("{}b", "u".repeat(63))));
        assert_eq!((a.len(), b.len()), (64, 64));
        assert_ne!(a, b, "differ only past the cut");
        assert_eq!(a, key(&format!("{}a", "u".repeat(63))), "stable");
        let retry = attempt_unique(&unique_base(&ns, Some("x"), None).expect("base"), 2, 3);
        assert!(retry.len() <= 64 && retry.ends_with("/2/3"), "{retry}");
        assert_ne!(
            attempt_unique(&unique_base("team-a", Some(&"y".repeat(64)), None).expect("base"), 0, 1),
            attempt_unique(&unique_base("team-b", Some(&"y".repeat(64)), None).expect("base"), 0, 1),
            "namespaces stay apart when the key is cut"
        );
    }

    #[test]
    fn the_digest_is_fixed() {
        // A changed digest would give a Job a new key for the same attempt.
        assert_eq!(digest(""), "cbf29ce4842223256c62272e07bb0142");
        assert_eq!(digest("a"), "af63dc4c8601ec8ce5c9b63722c2ee79");
    }
}
