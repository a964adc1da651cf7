//! What the operator and the sidecar must agree on, in one place: the flags the operator
//! renders into every pod and the sidecar parses ([`SidecarArgs`], with the diagnosis
//! [`Thresholds`]), the one duration type and its parser ([`GoDuration`]), and the pod
//! condition types the sidecar writes and the operator rolls up ([`SidecarCondition`]).
//!
//! Both binaries depend on this crate, so a flag, a duration form or a condition name
//! cannot drift between them: a spec the operator accepts renders arguments the sidecar
//! parses (a property test in the operator checks it for generated specs). Both also stop
//! the same way on SIGTERM ([`shutdown`]).

pub mod duration;
pub mod shutdown;
mod sidecar_args;
mod thresholds;

pub use duration::{DurationError, GoDuration, parse_duration};
pub use sidecar_args::SidecarArgs;
pub use thresholds::Thresholds;

/// Group of every resource and condition type this project owns.
pub const GROUP: &str = "apiworkload.io";

/// Prefix of the pod conditions the sidecar writes (`apiworkload.io/DNSHealthy`).
pub const CONDITION_PREFIX: &str = "apiworkload.io/";

/// Where the sidecar receives the app's opt-in per-worker heartbeat datagrams
/// (`sidecar/python/apiworkload_heartbeat.py` sends to the same address by default).
pub const DEFAULT_HEARTBEAT_LISTEN: &str = "127.0.0.1:9902";

/// The sidecar's in-flight requests metrics, which the operator's autoscaler queries:
/// the latest sample (a gauge) and its time integral, whose `rate()` over a window is
/// the average number of requests in flight.
pub const INFLIGHT_GAUGE: &str = "apiworkload_sidecar_inflight_requests";
pub const INFLIGHT_SECONDS: &str = "apiworkload_sidecar_inflight_request_seconds_total";

/// The conditions the sidecar writes on its own pod, which the operator rolls up into
/// the ApiWorkload's conditions of the same type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SidecarCondition {
    EventLoopResponsive,
    DnsHealthy,
    ConnectionsReused,
}

impl SidecarCondition {
    pub const ALL: [SidecarCondition; 3] = [
        SidecarCondition::EventLoopResponsive,
        SidecarCondition::DnsHealthy,
        SidecarCondition::ConnectionsReused,
    ];

    /// The type on the ApiWorkload (`DNSHealthy`).
    pub const fn as_str(self) -> &'static str {
        match self {
            SidecarCondition::EventLoopResponsive => "EventLoopResponsive",
            SidecarCondition::DnsHealthy => "DNSHealthy",
            SidecarCondition::ConnectionsReused => "ConnectionsReused",
        }
    }

    /// The type on the pod (`apiworkload.io/DNSHealthy`).
    pub fn pod_condition_type(self) -> String {
        format!("{CONDITION_PREFIX}{}", self.as_str())
    }

    /// The condition a pod condition type names, if it is one of ours.
    pub fn from_pod_condition_type(type_: &str) -> Option<SidecarCondition> {
        let name = type_.strip_prefix(CONDITION_PREFIX)?;
        SidecarCondition::ALL
            .into_iter()
            .find(|c| c.as_str() == name)
    }
}

impl std::fmt::Display for SidecarCondition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_condition_types_round_trip() {
        for c in SidecarCondition::ALL {
            assert_eq!(
                SidecarCondition::from_pod_condition_type(&c.pod_condition_type()),
                Some(c)
            );
        }
        assert_eq!(
            SidecarCondition::from_pod_condition_type("DNSHealthy"),
            None
        );
        assert_eq!(
            SidecarCondition::from_pod_condition_type("apiworkload.io/Other"),
            None
        );
    }
}
