//! Probes every configured name as the app resolves it and as an FQDN, and walks the
//! search list as the app would for a typical external name.

use std::sync::{Arc, Mutex};

use crate::{
    config::Config,
    dns::{self, Lookup, Mode, Rcode},
    metrics::DnsMetrics,
    resolv::{self, ResolvConf},
    window::{Evidence, EvidenceSink},
};

/// What the latest round saw, for /report.
#[derive(Debug, Clone, Default)]
pub struct LatestRound {
    pub resolv: ResolvConf,
    pub lookups: Vec<Lookup>,
}

/// Every `--dns-interval`. The pod's resolv.conf is re-read each round (the kubelet may
/// rewrite it).
pub async fn probe(
    config: Config,
    metrics: Arc<crate::metrics::Metrics>,
    evidence: EvidenceSink,
    latest: Arc<Mutex<LatestRound>>,
) {
    let recorder: &DnsMetrics = &metrics.dns;
    let mut ticker = tokio::time::interval(config.dns_interval);
    loop {
        ticker.tick().await;
        let conf = resolv::parse(&std::fs::read_to_string(&config.resolv_conf).unwrap_or_default());
        let nameservers = dns::nameserver_addrs(&conf, config.dns_port);
        let mut round = Vec::new();
        let configured = config
            .app
            .dns_probes
            .iter()
            .flat_map(|target| [Mode::AsApp, Mode::Fqdn].map(|mode| (target.as_str(), mode)));
        let walk = (!config.dns_walk_name.is_empty())
            .then_some((config.dns_walk_name.as_str(), Mode::SearchWalk));
        for (target, mode) in configured.chain(walk) {
            let lookup = dns::lookup_reporting(&conf, &nameservers, target, mode, |q| {
                evidence.send(Evidence::DnsQuery {
                    timed_out: q.rcode == Rcode::Timeout,
                })
            })
            .await;
            if let Some(done) = evidence_of(&lookup) {
                recorder.record(&lookup);
                evidence.send(done);
                round.push(lookup);
            }
        }
        if let Ok(mut l) = latest.lock() {
            *l = LatestRound {
                resolv: conf,
                lookups: round,
            };
        }
    }
}

/// What a finished lookup tells the window. A search walk counts as the app's lookup of
/// an external name: its queries plus the name's own A and AAAA (not sent). One that
/// asked nothing (the name is tried as itself first) measured nothing.
fn evidence_of(lookup: &Lookup) -> Option<Evidence> {
    let queries = lookup.queries.len() as u64;
    match lookup.mode {
        Mode::SearchWalk if queries == 0 => None,
        Mode::SearchWalk => Some(Evidence::DnsLookup {
            as_app: true,
            queries: queries + 2,
            seconds: lookup.seconds,
        }),
        Mode::AsApp | Mode::Fqdn => Some(Evidence::DnsLookup {
            as_app: lookup.mode == Mode::AsApp,
            queries,
            seconds: lookup.seconds,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::QueryRecord;

    fn walk(queries: usize) -> Lookup {
        let q = QueryRecord {
            name: "api.example.com.svc.cluster.local.".into(),
            qtype: "A",
            nameserver: None,
            rcode: Rcode::NxDomain,
            answers: 0,
            seconds: 0.001,
        };
        Lookup {
            target: dns::TYPICAL_EXTERNAL_NAME.into(),
            mode: Mode::SearchWalk,
            answered_by: None,
            queries: vec![q; queries],
            seconds: 0.01,
        }
    }

    /// The walk stands for the app's whole lookup: its queries and the name's own pair.
    #[test]
    fn a_search_walk_counts_as_the_apps_lookup_of_an_external_name() {
        assert_eq!(
            evidence_of(&walk(0)),
            None,
            "nothing asked, nothing measured"
        );
        assert_eq!(
            evidence_of(&walk(6)),
            Some(Evidence::DnsLookup {
                as_app: true,
                queries: 8,
                seconds: 0.01
            })
        );
    }

    /// Under the operator's `ndots: 2` a two-dot name is asked as itself first: no walk.
    #[test]
    fn the_walk_holds_only_the_names_before_the_external_one() {
        let conf = |ndots| {
            resolv::parse(&format!(
                "search ns.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:{ndots}\n"
            ))
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // No nameserver: every query fails at once, and shows which names were asked.
        let asked = |ndots| {
            rt.block_on(dns::lookup(
                &conf(ndots),
                &[],
                dns::TYPICAL_EXTERNAL_NAME,
                Mode::SearchWalk,
            ))
            .queries
            .into_iter()
            .map(|q| q.name)
            .collect::<Vec<_>>()
        };
        assert!(asked(2).is_empty());
        let walked = asked(5);
        assert_eq!(walked.len(), 6, "{walked:?}");
        assert!(
            walked.iter().all(|n| n.ends_with("cluster.local.")),
            "{walked:?}"
        );
    }
}
