//! Probes every configured name as the app resolves it and as an FQDN.

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
        for target in &config.app.dns_probes {
            for mode in [Mode::AsApp, Mode::Fqdn] {
                let lookup = dns::lookup_reporting(&conf, &nameservers, target, mode, |q| {
                    evidence.send(Evidence::DnsQuery {
                        timed_out: q.rcode == Rcode::Timeout,
                    })
                })
                .await;
                recorder.record(&lookup);
                evidence.send(evidence_of(&lookup));
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

fn evidence_of(lookup: &Lookup) -> Evidence {
    Evidence::DnsLookup {
        as_app: lookup.mode == Mode::AsApp,
        queries: lookup.queries.len() as u64,
        seconds: lookup.seconds,
    }
}
