//! DNS metrics: what the search list costs and how the probed lookups went.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};

use crate::{
    dns::{Lookup, Mode, Rcode},
    resolv::SearchExpansion,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LookupLabels {
    target: String,
    mode: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueryLabels {
    target: String,
    mode: String,
    rcode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NameserverLabels {
    nameserver: String,
    qtype: String,
    rcode: String,
}

fn dns_histogram() -> Histogram {
    // 0.5 ms … 8 s: in-cluster lookups need sub-millisecond buckets; 5 s retries show too.
    Histogram::new(exponential_buckets(0.0005, 2.0, 15))
}

/// `dns_*`: labels are the configured targets, ≤ 3 nameservers and fixed enums.
#[derive(Debug)]
pub struct DnsMetrics {
    lookup_duration: Family<LookupLabels, Histogram>,
    lookups: Family<LookupLabels, Counter>,
    queries: Family<QueryLabels, Counter>,
    query_duration: Family<NameserverLabels, Histogram>,
    timeouts: Family<NameserverLabels, Counter>,
}

impl DnsMetrics {
    pub fn register(registry: &mut Registry, expansions: &[SearchExpansion]) -> DnsMetrics {
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
        let m = DnsMetrics {
            lookup_duration: Family::new_with_constructor(dns_histogram as fn() -> Histogram),
            lookups: Family::default(),
            queries: Family::default(),
            query_duration: Family::new_with_constructor(dns_histogram as fn() -> Histogram),
            timeouts: Family::default(),
        };
        registry.register_with_unit(
            "dns_lookup_duration",
            "How long a lookup took, as the app sees it (as_app) or for the name alone (fqdn)",
            Unit::Seconds,
            m.lookup_duration.clone(),
        );
        registry.register("dns_lookups", "Lookups probed", m.lookups.clone());
        registry.register(
            "dns_queries",
            "Queries sent (queries / lookups is the ndots tax)",
            m.queries.clone(),
        );
        registry.register_with_unit(
            "dns_query_duration",
            "Latency of each query, by nameserver",
            Unit::Seconds,
            m.query_duration.clone(),
        );
        registry.register(
            "dns_timeouts",
            "Queries that got no answer within the resolver timeout",
            m.timeouts.clone(),
        );
        m
    }

    /// Records one probed lookup.
    pub fn record(&self, l: &Lookup) {
        let mode = match l.mode {
            Mode::AsApp => "as_app",
            Mode::Fqdn => "fqdn",
            Mode::SearchWalk => "search_walk",
        };
        let labels = LookupLabels {
            target: l.target.clone(),
            mode: mode.into(),
            result: l.result().into(),
        };
        self.lookup_duration
            .get_or_create(&labels)
            .observe(l.seconds);
        self.lookups.get_or_create(&labels).inc();
        for q in &l.queries {
            let rcode = q.rcode.as_str().to_string();
            self.queries
                .get_or_create(&QueryLabels {
                    target: l.target.clone(),
                    mode: mode.into(),
                    rcode: rcode.clone(),
                })
                .inc();
            let ns = NameserverLabels {
                nameserver: q.nameserver.map(|n| n.ip().to_string()).unwrap_or_default(),
                qtype: q.qtype.into(),
                rcode,
            };
            self.query_duration.get_or_create(&ns).observe(q.seconds);
            if q.rcode == Rcode::Timeout {
                self.timeouts.get_or_create(&ns).inc();
            }
        }
    }
}
