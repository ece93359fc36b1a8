//! Leader election over a `coordination.k8s.io/v1` Lease, for several controller replicas:
//! every replica serves xDS and the CA; only the leader writes to the API server (statuses,
//! waypoint objects, the root ConfigMap).
//!
//! The usual protocol: a replica takes the Lease when it is absent or its holder stopped
//! renewing for `leaseDurationSeconds`, renews it every `RENEW_EVERY` while it holds it, and
//! steps down when a renewal fails past the duration. Writes use the Lease's resourceVersion,
//! so two replicas racing for it cannot both win.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::Client;
use tokio::sync::watch;

pub const LEASE_NAME: &str = "ambit-controller";
const LEASE_SECONDS: i32 = 15;
const RENEW_EVERY: Duration = Duration::from_secs(5);

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

fn expired(lease: &Lease) -> bool {
    let Some(spec) = &lease.spec else { return true };
    let (Some(renewed), Some(secs)) = (&spec.renew_time, spec.lease_duration_seconds) else { return true };
    let deadline = renewed.0 + k8s_openapi::jiff::SignedDuration::from_secs(i64::from(secs));
    deadline < k8s_openapi::jiff::Timestamp::now()
}

/// One round: tries to take or renew the Lease; whether we hold it afterwards.
pub async fn try_acquire(api: &Api<Lease>, identity: &str) -> Result<bool, kube::Error> {
    let spec = |transitions: i32, acquired: Option<MicroTime>| LeaseSpec {
        holder_identity: Some(identity.to_owned()),
        lease_duration_seconds: Some(LEASE_SECONDS),
        acquire_time: acquired.or_else(|| Some(now())),
        renew_time: Some(now()),
        lease_transitions: Some(transitions),
        ..Default::default()
    };
    match api.get_opt(LEASE_NAME).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(LEASE_NAME.into()), ..Default::default() },
                spec: Some(spec(0, None)),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                // Someone else created it first.
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        Some(mut lease) => {
            let current = lease.spec.as_ref().and_then(|s| s.holder_identity.clone());
            let transitions = lease.spec.as_ref().and_then(|s| s.lease_transitions).unwrap_or(0);
            let mine = current.as_deref() == Some(identity);
            if !mine && !expired(&lease) {
                return Ok(false);
            }
            let acquired = if mine { lease.spec.as_ref().and_then(|s| s.acquire_time.clone()) } else { None };
            lease.spec = Some(spec(if mine { transitions } else { transitions + 1 }, acquired));
            // `replace` carries the resourceVersion we read: a concurrent taker gets 409.
            match api.replace(LEASE_NAME, &PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

/// Runs the election forever; `leader` says whether this replica leads.
pub async fn run(client: Client, namespace: String, identity: String, leader: watch::Sender<bool>) {
    let api: Api<Lease> = Api::namespaced(client, &namespace);
    let mut last_success = tokio::time::Instant::now();
    loop {
        match try_acquire(&api, &identity).await {
            Ok(held) => {
                last_success = tokio::time::Instant::now();
                if *leader.borrow() != held {
                    tracing::info!(%identity, leader = held, "leadership changed");
                }
                leader.send_replace(held);
            }
            Err(e) => {
                tracing::warn!(error = %e, "lease update failed");
                // Without a renewal for the lease's duration another replica may lead: step down.
                if last_success.elapsed() > Duration::from_secs(LEASE_SECONDS as u64) && *leader.borrow() {
                    tracing::warn!("stepping down: the lease could not be renewed");
                    leader.send_replace(false);
                }
            }
        }
        tokio::time::sleep(RENEW_EVERY).await;
    }
}
