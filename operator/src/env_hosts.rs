//! The hosts an app is configured to reach, read from its environment (`DATABASE_URL`,
//! `REDIS_URL=redis://cache:6379/0`, `KAFKA_BROKERS=k1:9092,k2:9092`): the names the
//! diagnostics sidecar resolves when the spec names none, so a search-list walk or a
//! failing resolver is reported with no configuration.

use k8s_openapi::api::core::v1::EnvVar;

/// At most this many names (each is resolved every DNS round).
pub const MAX_ENV_HOSTS: usize = 5;

/// Host names (not IP addresses, not localhost) in URLs and `host:port` values of
/// `env`, in order of appearance, each once, at most [`MAX_ENV_HOSTS`].
pub fn env_hosts(env: &[EnvVar]) -> Vec<String> {
    let mut hosts: Vec<String> = Vec::new();
    let values = env.iter().filter_map(|e| e.value.as_deref());
    for item in values.flat_map(|v| v.split([',', ' ', ';'])) {
        let Some(host) = host_of(item.trim()) else {
            continue;
        };
        if !hosts.contains(&host) {
            hosts.push(host);
        }
        if hosts.len() == MAX_ENV_HOSTS {
            break;
        }
    }
    hosts
}

/// The host of `scheme://[user@]host[:port][/…]` or of `host:port`.
fn host_of(item: &str) -> Option<String> {
    let (rest, is_url) = match item.split_once("://") {
        Some((scheme, rest)) if !scheme.is_empty() => (rest, true),
        _ => (item, false),
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (authority, None),
    };
    let port_ok = port.is_some_and(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
    // Without a scheme only `host:port` says it is an address.
    if !is_url && !port_ok {
        return None;
    }
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    (is_hostname(&host) && host != "localhost" && host.parse::<std::net::IpAddr>().is_err())
        .then_some(host)
}

/// RFC 1123 labels (the rule `spec.dns.probe` is admitted by), with a letter somewhere
/// (`10.0.0.1` is an address).
fn is_hostname(name: &str) -> bool {
    let label = |l: &str| {
        (1..=63).contains(&l.len())
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    name.len() <= 253 && name.split('.').all(label) && name.chars().any(|c| c.is_ascii_alphabetic())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<EnvVar> {
        pairs
            .iter()
            .map(|(n, v)| EnvVar {
                name: n.to_string(),
                value: Some(v.to_string()),
                value_from: None,
            })
            .collect()
    }

    #[test]
    fn urls_and_host_ports_name_the_hosts_the_app_reaches() {
        let e = env(&[
            (
                "DATABASE_URL",
                "postgresql://app:s3cret@db.prod.svc.cluster.local:5432/app",
            ),
            ("REDIS_URL", "redis://cache:6379/0"),
            ("KAFKA_BROKERS", "k1.kafka:9092,k2.kafka:9092"),
            ("PAYMENTS_API", "https://api.payments.example.com/v2?x=1"),
            ("LOG_LEVEL", "info"),
            ("TIMEOUT", "30"),
            ("RATIO", "3:4"),
            ("LOCAL", "http://localhost:8080"),
            ("IP", "http://10.0.0.7:80"),
            ("SAME_DB", "db.prod.svc.cluster.local:5432"),
        ]);
        assert_eq!(
            env_hosts(&e),
            [
                "db.prod.svc.cluster.local",
                "cache",
                "k1.kafka",
                "k2.kafka",
                "api.payments.example.com"
            ]
        );
    }

    #[test]
    fn at_most_five_and_never_a_malformed_name() {
        let many: Vec<(String, String)> = (0..9)
            .map(|i| (format!("SVC_{i}"), format!("svc-{i}.ns:80")))
            .collect();
        let pairs: Vec<(&str, &str)> = many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        assert_eq!(env_hosts(&env(&pairs)).len(), MAX_ENV_HOSTS);
        let bad = env(&[
            ("A", "http://-bad-.example:80"),
            ("B", "http://under_score.example"),
            ("C", "http://:80"),
            ("D", "://x:1"),
        ]);
        assert!(env_hosts(&bad).is_empty(), "{:?}", env_hosts(&bad));
    }
}
