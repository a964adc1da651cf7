//! Whether a desired object is already in place, so a no-op reconcile sends no write.
//!
//! Server-side apply of an unchanged object is still a PATCH. Instead two checks:
//! - the live object carries the [`fingerprint`] of exactly what we would apply now, so
//!   a field we *stopped* setting (which a subset check cannot see) forces an apply, and
//!   server-side apply then removes it;
//! - every field we set is present with the same value ([`is_applied`]), so drift made
//!   by someone else is corrected. Fields the apiserver defaulted or others own are
//!   ignored; quantities it canonicalised (`1000m` → `1`) compare by value.

use serde_json::Value;

/// Annotation holding the fingerprint of the last applied desired object.
pub const FINGERPRINT_ANNOTATION: &str = "apiworkload.io/applied-fingerprint";

/// A stable fingerprint (FNV-1a, 64 bit) of an object's JSON: the same across
/// processes and versions, unlike `std`'s hasher.
pub fn fingerprint(desired: &Value) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in desired.to_string().bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// Adds the fingerprint of `desired` (computed without it) to its annotations.
pub fn stamp(desired: &mut Value) -> String {
    let print = fingerprint(desired);
    if let Some(meta) = desired.get_mut("metadata").and_then(Value::as_object_mut) {
        let annotations = meta
            .entry("annotations")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(map) = annotations.as_object_mut() {
            map.insert(FINGERPRINT_ANNOTATION.into(), Value::String(print.clone()));
        }
    }
    print
}

/// Whether `live` holds what `stamped` (the output of [`stamp`]) describes.
pub fn up_to_date(stamped: &Value, live: &Value) -> bool {
    let print = |v: &Value| {
        v.pointer("/metadata/annotations")
            .and_then(|a| a.get(FINGERPRINT_ANNOTATION))
            .cloned()
    };
    print(stamped).is_some() && print(stamped) == print(live) && is_applied(stamped, live)
}

use crate::api::quantity::parse_quantity;

/// True when every field of `desired` appears in `live` with an equal value.
pub fn is_applied(desired: &Value, live: &Value) -> bool {
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => d
            .iter()
            .all(|(k, dv)| l.get(k).is_some_and(|lv| is_applied(dv, lv))),
        // Lists are owned whole: same length, element-wise subset.
        (Value::Array(d), Value::Array(l)) => {
            d.len() == l.len() && d.iter().zip(l).all(|(dv, lv)| is_applied(dv, lv))
        }
        (Value::String(d), Value::String(l)) => d == l || same_quantity(d, l),
        (Value::String(d), Value::Number(n)) | (Value::Number(n), Value::String(d)) => {
            same_quantity(d, &n.to_string())
        }
        (Value::Number(d), Value::Number(l)) => d.as_f64() == l.as_f64(),
        (d, l) => d == l,
    }
}

fn same_quantity(a: &str, b: &str) -> bool {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    let starts_numeric = |s: &str| s.starts_with(|c: char| c.is_ascii_digit());
    if !(starts_numeric(a) && starts_numeric(b)) {
        return false;
    }
    match (
        parse_quantity(&Quantity(a.into())),
        parse_quantity(&Quantity(b.into())),
    ) {
        (Ok(x), Ok(y)) => (x - y).abs() <= f64::EPSILON * x.abs().max(1.0),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn defaulted_fields_on_the_server_do_not_count_as_drift() {
        let desired = json!({"spec": {"ports": [{"port": 80}]}});
        let live =
            json!({"spec": {"ports": [{"port": 80, "protocol": "TCP"}], "clusterIP": "10.96.0.7"}});
        assert!(is_applied(&desired, &live));
    }

    #[test]
    fn changed_values_and_list_lengths_are_drift() {
        assert!(!is_applied(&json!({"a": ["x", "y"]}), &json!({"a": ["x"]})));
        assert!(!is_applied(
            &json!({"a": {"b": 1}}),
            &json!({"a": {"b": 2}})
        ));
        assert!(!is_applied(&json!({"a": 1}), &json!({})));
    }

    #[test]
    fn a_field_we_stopped_setting_is_not_up_to_date() {
        let mut before =
            json!({"metadata": {"name": "a"}, "spec": {"imagePullPolicy": "Always", "image": "x"}});
        stamp(&mut before);
        let live = before.clone();
        let unstamped = json!({"metadata": {"name": "a"}, "spec": {"image": "x"}});
        assert!(
            is_applied(&unstamped, &live),
            "a subset check alone misses the removal"
        );
        let mut now = unstamped;
        stamp(&mut now);
        assert!(!up_to_date(&now, &live), "the fingerprint catches it");
        assert!(up_to_date(&before, &live));
    }

    #[test]
    fn fingerprints_are_stable() {
        assert_eq!(fingerprint(&json!({"a": 1})), fingerprint(&json!({"a": 1})));
        assert_ne!(fingerprint(&json!({"a": 1})), fingerprint(&json!({"a": 2})));
        // FNV-1a 64 of the bytes `null`, computed independently.
        assert_eq!(fingerprint(&json!(null)), "5b9bc4ba528108e4");
    }

    #[test]
    fn canonicalised_quantities_are_equal() {
        assert!(is_applied(&json!({"cpu": "1000m"}), &json!({"cpu": "1"})));
        assert!(is_applied(
            &json!({"memory": "1024Mi"}),
            &json!({"memory": "1Gi"})
        ));
        assert!(!is_applied(&json!({"cpu": "500m"}), &json!({"cpu": "1"})));
        assert!(!is_applied(
            &json!({"image": "app:1"}),
            &json!({"image": "app:2"})
        ));
    }
}
