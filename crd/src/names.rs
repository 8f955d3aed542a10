//! Name rules shared by the CRDs: Gearman function names, derived Deployment
//! names and references to ConfigMaps / Secrets.

/// Pattern every Gearman function name must match.
///
/// 1–63 characters from `[A-Za-z0-9._-]`, starting and ending with a letter or
/// digit. This makes every function name a valid Kubernetes label value, so
/// the operator can label the pods serving it with the name as-is.
pub const FUNCTION_NAME_PATTERN: &str = "^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$";

/// Maximum length of a function name.
pub const FUNCTION_NAME_MAX_LEN: usize = 63;

/// Pattern of a DNS-1123 subdomain (ConfigMap and Secret names).
pub const DNS1123_SUBDOMAIN_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// Maximum length of a DNS-1123 subdomain.
pub const DNS1123_SUBDOMAIN_MAX_LEN: usize = 253;

/// Maximum length of a DNS-1123 label (and of derived Deployment names).
pub const DNS1123_LABEL_MAX_LEN: usize = 63;

/// Pattern of a ConfigMap / Secret data key.
pub const CONFIG_KEY_PATTERN: &str = r"^[-._a-zA-Z0-9]+$";

/// Maximum length of a ConfigMap / Secret data key.
pub const CONFIG_KEY_MAX_LEN: usize = 253;

/// Whether `name` is a valid Gearman function name for gearfleet
/// (see [`FUNCTION_NAME_PATTERN`]).
pub fn is_valid_function_name(name: &str) -> bool {
    let b = name.as_bytes();
    if b.is_empty() || b.len() > FUNCTION_NAME_MAX_LEN {
        return false;
    }
    let inner_ok = |c: &u8| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-');
    b[0].is_ascii_alphanumeric() && b[b.len() - 1].is_ascii_alphanumeric() && b.iter().all(inner_ok)
}

/// Whether `name` is a valid DNS-1123 subdomain (see [`DNS1123_SUBDOMAIN_PATTERN`]).
pub fn is_dns1123_subdomain(name: &str) -> bool {
    name.len() <= DNS1123_SUBDOMAIN_MAX_LEN && !name.is_empty() && name.split('.').all(is_label_part)
}

/// Whether `name` is a valid DNS-1123 label (at most 63 characters of
/// `[a-z0-9-]`, starting and ending with a letter or digit).
pub fn is_dns1123_label(name: &str) -> bool {
    name.len() <= DNS1123_LABEL_MAX_LEN && is_label_part(name)
}

fn is_label_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Whether `key` is a valid ConfigMap / Secret data key (see [`CONFIG_KEY_PATTERN`]).
pub fn is_valid_config_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= CONFIG_KEY_MAX_LEN
        && key.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_'))
}

/// Name of the Deployment that runs the workers of `function` in pool `pool`.
///
/// The result is always a valid DNS-1123 label (so it is also usable as a
/// label value and a Service name):
///
/// * If `<pool>-<function>` already is a valid DNS-1123 label, it is used
///   unchanged (`demo` + `echo` → `demo-echo`).
/// * Otherwise it is lower-cased, every character other than `[a-z0-9-]` is
///   replaced by `-`, the result is cut to 54 characters and `-<hash>` is
///   appended, where `<hash>` is 8 hex digits of a stable hash of the original
///   pool and function names. The hash keeps names distinct when the mapping
///   is lossy (`Echo` and `echo`, `a.b` and `a_b`) or truncates.
///
/// ```
/// use gearfleet_crd::deployment_name;
/// assert_eq!(deployment_name("demo", "echo"), "demo-echo");
/// let n = deployment_name("demo", "Image.Resize");
/// assert!(n.starts_with("demo-image-resize-") && n.len() == "demo-image-resize-".len() + 8);
/// ```
pub fn deployment_name(pool: &str, function: &str) -> String {
    let plain = format!("{pool}-{function}");
    if is_dns1123_label(&plain) {
        return plain;
    }
    let hash = fnv1a64(format!("{pool}/{function}").as_bytes());
    let suffix = format!("{:08x}", hash as u32 ^ (hash >> 32) as u32);
    let max_prefix = DNS1123_LABEL_MAX_LEN - suffix.len() - 1;
    let sanitized: String = plain
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() { c } else { '-' })
        .take(max_prefix)
        .collect();
    let prefix = sanitized.trim_matches('-');
    if prefix.is_empty() { format!("gearfleet-{suffix}") } else { format!("{prefix}-{suffix}") }
}

/// 64-bit FNV-1a; stable across platforms and releases (unlike `DefaultHasher`).
fn fnv1a64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_names() {
        for ok in ["a", "echo", "Reverse", "image.resize", "a_b-c.d", "0", &"x".repeat(63)] {
            assert!(is_valid_function_name(ok), "{ok:?}");
        }
        for bad in ["", "-a", "a-", "a.", "_a", "a b", "a:b", "a/b", "a\0b", "é", &"x".repeat(64)] {
            assert!(!is_valid_function_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn dns_names() {
        assert!(is_dns1123_subdomain("my-config.v1"));
        assert!(!is_dns1123_subdomain("My-config"));
        assert!(!is_dns1123_subdomain("a..b"));
        assert!(!is_dns1123_subdomain(""));
        assert!(!is_dns1123_subdomain(&"a".repeat(254)));
        assert!(is_dns1123_label("a-1"));
        assert!(!is_dns1123_label("a.b"));
        assert!(!is_dns1123_label(&"a".repeat(64)));
        assert!(is_valid_config_key("payload.json"));
        assert!(is_valid_config_key("_x-Y"));
        assert!(!is_valid_config_key("a/b"));
        assert!(!is_valid_config_key(""));
    }

    #[test]
    fn deployment_name_plain() {
        assert_eq!(deployment_name("demo", "echo"), "demo-echo");
        assert_eq!(deployment_name("demo", "resize-v2"), "demo-resize-v2");
    }

    #[test]
    fn deployment_name_sanitizes_with_hash() {
        let upper = deployment_name("demo", "Echo");
        let lower = deployment_name("demo", "echo");
        assert_ne!(upper, lower);
        assert!(upper.starts_with("demo-echo-"), "{upper}");
        assert!(is_dns1123_label(&upper));

        let dot = deployment_name("demo", "a.b");
        let underscore = deployment_name("demo", "a_b");
        assert_ne!(dot, underscore);
        assert!(dot.starts_with("demo-a-b-"));
        assert!(is_dns1123_label(&dot) && is_dns1123_label(&underscore));

        // Pool names may contain dots (DNS-1123 subdomain).
        let n = deployment_name("team.pool", "echo");
        assert!(n.starts_with("team-pool-echo-"), "{n}");
        assert!(is_dns1123_label(&n));
    }

    #[test]
    fn deployment_name_is_stable() {
        // Pinned so that a change of the hash (which would orphan Deployments) is noticed.
        assert_eq!(deployment_name("demo", "Echo"), deployment_name("demo", "Echo"));
        let n = deployment_name("demo", "Echo");
        let expected_hash = {
            let h = fnv1a64(b"demo/Echo");
            format!("{:08x}", h as u32 ^ (h >> 32) as u32)
        };
        assert_eq!(n, format!("demo-echo-{expected_hash}"));
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn deployment_name_truncates() {
        let pool = "p".repeat(40);
        let func = "f".repeat(63);
        let n = deployment_name(&pool, &func);
        assert_eq!(n.len(), 63, "{n}");
        assert!(is_dns1123_label(&n));
        assert!(n.starts_with(&pool));
        // Different long names that share the prefix stay distinct.
        let other = deployment_name(&pool, &format!("{}g", "f".repeat(62)));
        assert_ne!(n, other);
        assert_eq!(n[..54], other[..54]);

        // Cutting right after a '-' must not leave "--hash" or a trailing '-'.
        let pool = "q".repeat(53);
        let n = deployment_name(&pool, "Fn");
        assert!(is_dns1123_label(&n), "{n}");
        assert!(!n.contains("--"), "{n}");

        // Exactly 63 characters and valid: unchanged.
        let pool = "p".repeat(31);
        let func = "f".repeat(31);
        assert_eq!(deployment_name(&pool, &func), format!("{pool}-{func}"));
        // 64 characters: hashed.
        let func = "f".repeat(32);
        let n = deployment_name(&pool, &func);
        assert_eq!(n.len(), 63);
        assert!(is_dns1123_label(&n));
    }

    #[test]
    fn deployment_name_degenerate() {
        let n = deployment_name("", "");
        assert!(is_dns1123_label(&n), "{n}");
        assert!(n.starts_with("gearfleet-"));
    }
}
