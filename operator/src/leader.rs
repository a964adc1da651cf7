//! Leader election with a `coordination.k8s.io/v1` Lease, so two replicas are safe: only
//! the holder reconciles; a standby takes over when the holder stops renewing.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api, Client,
    api::{PostParams, ResourceExt},
};
use tracing::{info, warn};

pub const LEASE_DURATION: Duration = Duration::from_secs(15);
pub const RENEW_EVERY: Duration = Duration::from_secs(5);
/// How long a successful renewal lets this replica act (client-go's renewDeadline): well
/// short of the lease, which a standby judges by its own clock. A replica that cannot
/// renew within it (paused, partitioned, a renewal that hangs) stops writing before a
/// standby may take over.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
const RETRY_EVERY: Duration = Duration::from_secs(2);

/// Whether this replica may write now. Without leader election it always may; with it,
/// only until [`RENEW_DEADLINE`] after the start of its last successful renewal, on the
/// monotonic clock (which keeps running while the process is stopped).
#[derive(Debug, Clone, Default)]
pub struct Leadership {
    /// None: no election, always the leader.
    valid_until: Option<Arc<Mutex<Option<Instant>>>>,
}

impl Leadership {
    /// Leadership that must be renewed (starts out not held).
    pub fn elected() -> Leadership {
        Leadership {
            valid_until: Some(Arc::default()),
        }
    }

    pub fn is_leader(&self) -> bool {
        match &self.valid_until {
            None => true,
            Some(until) => until
                .lock()
                .ok()
                .and_then(|u| *u)
                .is_some_and(|u| Instant::now() < u),
        }
    }

    /// A renewal that started at `started` succeeded.
    fn renewed(&self, started: Instant) {
        if let Some(until) = &self.valid_until
            && let Ok(mut u) = until.lock()
        {
            *u = Some(started + RENEW_DEADLINE);
        }
    }

    fn lost(&self) {
        if let Some(until) = &self.valid_until
            && let Ok(mut u) = until.lock()
        {
            *u = None;
        }
    }
}

/// One candidate for the lease `name` in `namespace`.
#[derive(Clone)]
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
}

impl std::fmt::Debug for LeaderElector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderElector")
            .field("name", &self.name)
            .field("identity", &self.identity)
            .finish()
    }
}

fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let Some(renewed) = spec.renew_time.as_ref().map(|t| t.0) else {
        return true;
    };
    let secs = i64::from(
        spec.lease_duration_seconds
            .unwrap_or(LEASE_DURATION.as_secs() as i32),
    );
    renewed + SignedDuration::from_secs(secs) < now
}

impl LeaderElector {
    pub fn new(client: Client, namespace: &str, name: &str, identity: String) -> Self {
        LeaderElector {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity,
        }
    }

    fn spec(&self, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
            acquire_time: Some(acquired.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// One attempt: Ok(true) when we hold the lease afterwards. Writes use the lease's
    /// resourceVersion, so two candidates can never both win.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(None, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let mine = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        let free = spec.holder_identity.as_deref().unwrap_or("").is_empty();
        if !(mine || free || expired(&spec, Timestamp::now())) {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
        lease.spec = Some(self.spec(if mine { spec.acquire_time } else { None }, transitions));
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// One attempt that gives up at [`RENEW_DEADLINE`]; records a success in `leadership`.
    async fn attempt(&self, leadership: &Leadership) -> Result<bool, kube::Error> {
        let started = Instant::now();
        match tokio::time::timeout(RENEW_DEADLINE, self.try_acquire_or_renew()).await {
            Ok(Ok(true)) => {
                leadership.renewed(started);
                Ok(true)
            }
            Ok(other) => other,
            Err(_) => Ok(false),
        }
    }

    /// Waits until this candidate holds the lease.
    pub async fn acquire(&self, leadership: &Leadership) {
        loop {
            match self.attempt(leadership).await {
                Ok(true) => {
                    info!(lease = %self.name, identity = %self.identity, "acquired leadership");
                    return;
                }
                Ok(false) => {}
                Err(e) => warn!(error = %e, "leader election attempt failed"),
            }
            tokio::time::sleep(RETRY_EVERY).await;
        }
    }

    /// Renews until the lease is lost or a renewal misses [`RENEW_DEADLINE`] (returns
    /// then, `leadership` already refusing writes): the caller must stop reconciling.
    pub async fn keep_renewing(&self, leadership: &Leadership) {
        loop {
            tokio::time::sleep(RENEW_EVERY).await;
            if !leadership.is_leader() {
                // Paused or starved past the deadline: a standby may hold the lease now.
                warn!(lease = %self.name, deadline = ?RENEW_DEADLINE, "no renewal within the deadline; leadership given up");
                leadership.lost();
                return;
            }
            match self.attempt(leadership).await {
                Ok(true) => {}
                Ok(false) => {
                    warn!(lease = %self.name, "leadership lost to another replica");
                    leadership.lost();
                    return;
                }
                Err(e) => warn!(error = %e, "lease renewal failed"),
            }
        }
    }

    /// Gives the lease up on clean shutdown so a standby takes over at once.
    pub async fn release(&self) {
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await {
            let spec = lease.spec.get_or_insert_with(Default::default);
            if spec.holder_identity.as_deref() == Some(self.identity.as_str()) {
                spec.holder_identity = None;
                spec.renew_time = None;
                if let Err(e) = self
                    .api
                    .replace(&lease.name_any(), &PostParams::default(), &lease)
                    .await
                {
                    warn!(error = %e, "could not release the lease");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn leadership_lapses_at_the_renew_deadline_without_a_renewal() {
        assert!(Leadership::default().is_leader(), "no election: always");
        let l = Leadership::elected();
        assert!(!l.is_leader(), "not before the first renewal");
        l.renewed(Instant::now());
        assert!(l.is_leader());
        // A process stopped for longer than the deadline comes back without it.
        tokio::time::advance(RENEW_DEADLINE).await;
        assert!(!l.is_leader());
        l.renewed(Instant::now());
        l.lost();
        assert!(!l.is_leader());
        assert!(RENEW_DEADLINE < LEASE_DURATION);
    }
}
