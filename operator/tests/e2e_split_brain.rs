//! Two leaders never overlap: a leader paused with SIGSTOP (a frozen node, a long stall)
//! loses the lease to the standby, and once resumed writes nothing, although work is
//! queued for it, because its leadership lapsed at the renew deadline on its own clock.
//! Its own control plane: the two replicas render different sidecar images, so any write
//! by the old leader shows in the Deployments, and other tests' workloads stay out of it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use apiworkload_e2e::operator::*;
use apiworkload_e2e::process::Operator;
use apiworkload_e2e::{PrivateCluster, TestNamespace, install_crds, poll_until, wait_until};
use k8s_openapi::api::apps::v1::Deployment;
use kube::{Api, api::ListParams};
use serde_json::json;

const WORKLOADS: usize = 20;

fn sidecar_images(d: &Deployment) -> Vec<String> {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.init_containers.clone())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|c| c.image)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_writes_nothing_after_the_standby_takes_over() {
    let cluster = PrivateCluster::up("split-brain");
    install_crds(&cluster);
    let client = cluster.client().await;
    let ns = TestNamespace::create(&client, "split", &[]).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let holder = || lease_holder(&client, &ns.name);
    let replica = |identity: &str, image: &str| {
        Operator::start_as(
            &cluster.kubeconfig,
            &["--leader-elect".into(), format!("--sidecar-image={image}")],
            identity,
            &ns.name,
        )
    };
    let (image_a, image_b) = ("registry.example/sidecar:a", "registry.example/sidecar:b");
    let every_deployment_has = |image: &'static str| {
        let deployments = deployments.clone();
        move || {
            let deployments = deployments.clone();
            async move {
                let list = deployments
                    .list(&ListParams::default())
                    .await
                    .unwrap()
                    .items;
                list.len() == WORKLOADS
                    && list
                        .iter()
                        .all(|d| sidecar_images(d) == [image.to_string()])
            }
        }
    };

    for i in 0..WORKLOADS {
        create_workload(&client, &ns.name, &format!("w{i}"), fixed_spec(1)).await;
    }
    let a = replica("replica-a", image_a);
    poll_until(
        Duration::from_secs(30),
        "replica-a holding the lease",
        || async { (holder().await.as_deref() == Some("replica-a")).then_some(()) },
    )
    .await;
    wait_until(
        Duration::from_secs(60),
        "every Deployment from replica-a",
        every_deployment_has(image_a),
    )
    .await;
    let b = replica("replica-b", image_b);
    wait_until(
        Duration::from_secs(30),
        "replica-b up as a standby",
        || async { b.metric("apiworkload_operator_leader") == Some(0.0) },
    )
    .await;

    a.signal("STOP");
    let paused = Instant::now();
    poll_until(
        Duration::from_secs(30),
        "replica-b to take the lease",
        || async { (holder().await.as_deref() == Some("replica-b")).then_some(()) },
    )
    .await;
    wait_until(
        Duration::from_secs(60),
        "every Deployment from replica-b",
        every_deployment_has(image_b),
    )
    .await;
    // Work queued for the paused leader: every workload edited while it sleeps.
    for i in 0..WORKLOADS {
        patch_workload(
            &client,
            &ns.name,
            &format!("w{i}"),
            json!({"metadata": {"annotations": {"edited": "while-paused"}}}),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    eprintln!("replica-a paused {:?}; resuming it", paused.elapsed());
    a.signal("CONT");

    // For 15 s after it resumes, no Deployment may carry replica-a's rendering again.
    let end = Instant::now() + Duration::from_secs(15);
    while Instant::now() < end {
        for d in deployments
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
        {
            assert!(
                !sidecar_images(&d).contains(&image_a.to_string()),
                "the resumed old leader wrote Deployment {:?} after the takeover",
                d.metadata.name
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(holder().await.as_deref(), Some("replica-b"));
    assert_eq!(b.metric("apiworkload_operator_leader"), Some(1.0));
    let mut a = a;
    wait_until(Duration::from_secs(15), "the old leader to exit", || {
        let running = a.running();
        async move { !running }
    })
    .await;
}
