//! Findings and their evidence, for /report and /metrics.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, gauge::Gauge, info::Info},
    registry::Registry,
};
use serde::Serialize;

use crate::resolv::{ResolvConf, candidates};

/// What the resolver configuration alone says about one probed name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SearchExpansion {
    pub name: String,
    /// Names the resolver tries, in order.
    pub candidates: Vec<String>,
    /// Queries before the real name is asked (A and AAAA each): the ndots tax of an
    /// external name that only resolves as itself.
    pub queries_before_name: usize,
}

/// The static DNS finding for each configured name.
pub fn search_expansions(conf: &ResolvConf, names: &[String]) -> Vec<SearchExpansion> {
    names
        .iter()
        .map(|name| {
            let c = candidates(name, conf);
            let absolute = format!("{}.", name.trim_end_matches('.'));
            let position = c.iter().position(|n| *n == absolute).unwrap_or(0);
            SearchExpansion {
                name: name.clone(),
                queries_before_name: 2 * position,
                candidates: c,
            }
        })
        .collect()
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: String,
}

/// OpenMetrics text for the current findings.
pub fn metrics_text(expansions: &[SearchExpansion]) -> String {
    let mut registry = Registry::with_prefix("apiworkload_sidecar");
    let version = VersionLabels {
        version: env!("CARGO_PKG_VERSION").into(),
    };
    registry.register("build", "Sidecar build", Info::new(version));
    let tax = Family::<TargetLabels, Gauge>::default();
    for e in expansions {
        tax.get_or_create(&TargetLabels {
            target: e.name.clone(),
        })
        .set(e.queries_before_name as i64);
    }
    registry.register(
        "dns_search_queries_before_name",
        "Queries (A and AAAA) the search list costs before the name itself is asked",
        tax,
    );
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolv::parse;

    #[test]
    fn counts_the_ndots_tax_per_name() {
        let conf =
            parse("search ns.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n");
        let e = search_expansions(
            &conf,
            &["api.example.com".into(), "api.example.com.".into()],
        );
        assert_eq!(
            e[0].queries_before_name, 6,
            "3 search suffixes × (A + AAAA)"
        );
        assert_eq!(
            e[1].queries_before_name, 0,
            "a trailing dot skips the search list"
        );
        let text = metrics_text(&e);
        assert!(
            text.contains(
                r#"apiworkload_sidecar_dns_search_queries_before_name{target="api.example.com"} 6"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"apiworkload_sidecar_build_info{version=""#),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
