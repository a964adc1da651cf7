//! Whether a desired object is already in place, so a no-op reconcile sends no write.
//!
//! Server-side apply of an unchanged object is still a PATCH. Instead the desired
//! object (what we would apply) is compared with the live one: every field we set must
//! be present with the same value; fields the apiserver defaulted or others own are
//! ignored. Quantities the apiserver canonicalised (`1000m` → `1`) compare by value.

use serde_json::Value;

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
