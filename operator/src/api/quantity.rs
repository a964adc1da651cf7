//! Reading Kubernetes resource quantities (`500m`, `2`, `1.5`, `512Mi`, `1G`, `1e3`).

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Why a quantity was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid quantity {0:?}")]
pub struct QuantityError(pub String);

/// The value of a quantity in its base unit (cores for CPU, bytes for memory).
pub fn parse_quantity(q: &Quantity) -> Result<f64, QuantityError> {
    let s = q.0.trim();
    let err = || QuantityError(q.0.clone());
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let number: f64 = number.parse().map_err(|_| err())?;
    let multiplier = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp if exp.starts_with(['e', 'E']) => {
            let e: i32 = exp[1..].parse().map_err(|_| err())?;
            10f64.powi(e)
        }
        _ => return Err(err()),
    };
    let value = number * multiplier;
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(err())
    }
}

/// Formats bytes the way people write memory limits (`256Mi`, `1536Mi`, `2Gi`).
pub fn format_bytes(bytes: f64) -> String {
    const MI: f64 = 1024.0 * 1024.0;
    let mi = (bytes / MI).round() as u64;
    if mi >= 1024 && mi.is_multiple_of(1024) {
        format!("{}Gi", mi / 1024)
    } else {
        format!("{mi}Mi")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> f64 {
        parse_quantity(&Quantity(s.into())).unwrap()
    }

    #[test]
    fn cpu_and_memory_forms() {
        assert_eq!(q("500m"), 0.5);
        assert_eq!(q("2"), 2.0);
        assert_eq!(q("1.5"), 1.5);
        assert_eq!(q("256Mi"), 256.0 * 1024.0 * 1024.0);
        assert_eq!(q("1G"), 1e9);
        assert_eq!(q("1e3"), 1000.0);
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "abc", "1Xi", "-1", "1.2.3"] {
            assert!(parse_quantity(&Quantity(bad.into())).is_err(), "{bad}");
        }
    }

    #[test]
    fn formats_memory() {
        assert_eq!(format_bytes(q("256Mi")), "256Mi");
        assert_eq!(format_bytes(q("2Gi")), "2Gi");
        assert_eq!(format_bytes(q("1536Mi")), "1536Mi");
    }
}
