//! The Deployment: the app container with its command, env, probes, preStop drain,
//! restricted security context and in-memory /tmp; the diagnostics sidecar as a native
//! sidecar; DNS config; a grace period that covers the shutdown budget.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment},
        core::v1::{
            Capabilities, Container, ContainerPort, ContainerResizePolicy, EmptyDirVolumeSource,
            EnvVar, EnvVarSource, HTTPGetAction, Lifecycle, LifecycleHandler, LocalObjectReference,
            ObjectFieldSelector, PodDNSConfig, PodDNSConfigOption, PodSecurityContext, PodSpec,
            PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, SecurityContext,
            SleepAction, Volume, VolumeMount,
        },
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};

use kube::ResourceExt;

use super::{
    APP_CONTAINER, RenderContext, SIDECAR_CONTAINER, child_meta, identity, labels, selector_labels,
};
use crate::{api::ApiWorkload, plan::Plan};

/// UIDs: the sidecar runs under a different UID from the app so its own sockets can be
/// told apart from the app's in socket diagnostics.
pub const APP_UID: i64 = 10001;
pub const SIDECAR_UID: i64 = 10002;
/// Startup probe period; the failure threshold stretches it over the startup budget.
pub const STARTUP_PERIOD_SECONDS: i32 = 5;
pub const READINESS_PERIOD_SECONDS: i32 = 10;
pub const LIVENESS_FAILURE_THRESHOLD: i32 = 3;

fn restricted_security_context(uid: i64) -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(uid),
        run_as_group: Some(uid),
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..Default::default()
    }
}

fn http_probe(path: &str, port: &str, timeout: i32, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::String(port.to_string()),
            ..Default::default()
        }),
        timeout_seconds: Some(timeout),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        success_threshold: Some(1),
        ..Default::default()
    }
}

fn env(name: &str, value: impl ToString) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.to_string()),
        value_from: None,
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                api_version: None,
            }),
            ..Default::default()
        }),
    }
}

fn resources(spec: &crate::api::Resources) -> ResourceRequirements {
    let list = |a: &crate::api::ResourceAmounts| {
        let mut m = BTreeMap::new();
        if let Some(c) = &a.cpu {
            m.insert("cpu".to_string(), c.clone());
        }
        if let Some(mem) = &a.memory {
            m.insert("memory".to_string(), mem.clone());
        }
        (!m.is_empty()).then_some(m)
    };
    ResourceRequirements {
        requests: list(&spec.requests),
        limits: list(&spec.limits),
        claims: None,
    }
}

fn app_container(aw: &ApiWorkload, plan: &Plan, command: &[String]) -> Container {
    let spec = &aw.spec;
    let b = &plan.budget;
    let probes = &spec.probes;
    let timeout = probes.timeout_seconds;

    // Operator-derived env first; a user entry with the same name replaces it (a
    // duplicate name would make server-side apply reject the list).
    let mut env_vars = vec![env("WEB_CONCURRENCY", plan.sizing.workers)];
    if let Some(cores) = plan.sizing.cores {
        env_vars.push(env("PYTHON_CPU_COUNT", cores));
    }
    env_vars.retain(|e| !spec.env.iter().any(|u| u.name == e.name));
    env_vars.extend(spec.env.iter().cloned());
    // The heartbeat's directory goes ahead of the user's own PYTHONPATH, not instead.
    if let Some(path) = super::python_modules::pythonpath(spec) {
        env_vars.retain(|e| e.name != path.name);
        env_vars.push(path);
    }

    let startup_failures =
        super::div_ceil(b.startup.ceil_secs_i32(), STARTUP_PERIOD_SECONDS).max(1);
    // Liveness gives up only after the server's own worker kill (the heartbeat) had its
    // chance, so a busy-but-alive pod is not restarted from outside.
    let liveness_period = super::div_ceil(
        b.worker_heartbeat.ceil_secs_i32().saturating_add(10),
        LIVENESS_FAILURE_THRESHOLD,
    )
    .max(10);

    let mut mounts = vec![VolumeMount {
        name: "tmp".into(),
        mount_path: "/tmp".into(),
        ..Default::default()
    }];
    if !super::python_modules::modules(spec, plan).is_empty() {
        mounts.push(super::python_modules::mount());
    }
    mounts.extend(spec.volume_mounts.iter().cloned());

    Container {
        name: APP_CONTAINER.into(),
        image: Some(spec.image.clone()),
        image_pull_policy: spec.image_pull_policy.map(|p| p.as_str().to_string()),
        command: Some(command.to_vec()),
        env: Some(env_vars),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: spec.port,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        resources: Some(resources(&spec.resources)),
        // Workers were counted from the CPU at start: an in-place CPU resize must restart.
        resize_policy: plan.sizing.derived_from_cpu.then(|| {
            vec![
                ContainerResizePolicy {
                    resource_name: "cpu".into(),
                    restart_policy: "RestartContainer".into(),
                },
                ContainerResizePolicy {
                    resource_name: "memory".into(),
                    restart_policy: "NotRequired".into(),
                },
            ]
        }),
        startup_probe: Some(http_probe(
            &probes.path,
            "http",
            timeout,
            STARTUP_PERIOD_SECONDS,
            startup_failures,
        )),
        readiness_probe: Some(http_probe(
            probes.readiness_path.as_deref().unwrap_or(&probes.path),
            "http",
            timeout,
            READINESS_PERIOD_SECONDS,
            3,
        )),
        liveness_probe: Some(http_probe(
            probes.liveness_path.as_deref().unwrap_or(&probes.path),
            "http",
            timeout,
            liveness_period,
            LIVENESS_FAILURE_THRESHOLD,
        )),
        lifecycle: Some(Lifecycle {
            // Native sleep: no shell needed in the image; endpoints drain before SIGTERM.
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: b.drain.ceil_secs(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        security_context: Some(restricted_security_context(APP_UID)),
        volume_mounts: Some(mounts),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    }
}

fn sidecar_container(aw: &ApiWorkload, plan: &Plan, ctx: &RenderContext) -> Container {
    let spec = &aw.spec;
    let q = |s: &str| Quantity(s.into());
    Container {
        name: SIDECAR_CONTAINER.into(),
        image: Some(
            spec.diagnostics
                .image
                .clone()
                .unwrap_or_else(|| ctx.sidecar_image.clone()),
        ),
        // A native sidecar: starts before the app and stops after it.
        restart_policy: Some("Always".into()),
        args: Some(plan.sidecar.to_args()),
        env: Some(vec![
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("diagnostics".into()),
            container_port: spec.diagnostics.port,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        // No CPU limit: throttling the sidecar would skew its own timing.
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".into(), q("10m")),
                ("memory".into(), q("32Mi")),
            ])),
            limits: Some(BTreeMap::from([("memory".into(), q("64Mi"))])),
            claims: None,
        }),
        readiness_probe: Some(http_probe("/healthz", "diagnostics", 3, 10, 3)),
        // Its own credentials (the app container has none): see render::identity.
        volume_mounts: Some(vec![identity::token_mount()]),
        security_context: Some(restricted_security_context(SIDECAR_UID)),
        ..Default::default()
    }
}

/// The Deployment. `replicas` is set only when no autoscaler owns it.
pub fn deployment(
    aw: &ApiWorkload,
    plan: &Plan,
    ctx: &RenderContext,
    command: &[String],
    replicas: Option<i32>,
) -> Deployment {
    let spec = &aw.spec;
    let mut volumes = vec![Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".into()),
            size_limit: Some(Quantity("64Mi".into())),
        }),
        ..Default::default()
    }];
    let python_modules = super::python_modules::modules(spec, plan);
    volumes.extend(super::python_modules::volume(&python_modules));
    volumes.extend(spec.volumes.iter().cloned());
    let diagnostics = spec.diagnostics.enabled;
    if diagnostics {
        volumes.push(identity::token_volume());
    }

    let pod = PodSpec {
        containers: vec![app_container(aw, plan, command)],
        init_containers: spec
            .diagnostics
            .enabled
            .then(|| vec![sidecar_container(aw, plan, ctx)]),
        volumes: Some(volumes),
        // With diagnostics the pods run as the workload's ServiceAccount, whose token is
        // projected into the sidecar alone; the app container gets no API credentials.
        service_account_name: diagnostics.then(|| aw.name_any()),
        automount_service_account_token: diagnostics.then_some(false),
        termination_grace_period_seconds: Some(plan.budget.termination_grace_period.ceil_secs()),
        dns_config: Some(PodDNSConfig {
            options: Some(vec![PodDNSConfigOption {
                name: Some("ndots".into()),
                value: Some(spec.dns.ndots.to_string()),
            }]),
            ..Default::default()
        }),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            // The kubelet writes projected files as root (the app and the sidecar run as
            // two UIDs, so it picks no file owner) and makes them readable only to the
            // pod's fsGroup: without it the sidecar cannot read its token and never
            // writes a pod condition (seen on a real node: "failed to read the default
            // namespace: Permission denied").
            fs_group: diagnostics.then_some(SIDECAR_UID),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..Default::default()
        }),
        image_pull_secrets: (!spec.image_pull_secrets.is_empty()).then(|| {
            spec.image_pull_secrets
                .iter()
                .map(|name| LocalObjectReference { name: name.clone() })
                .collect()
        }),
        ..Default::default()
    };

    Deployment {
        metadata: child_meta(aw),
        spec: Some(DeploymentSpec {
            replicas,
            selector: LabelSelector {
                match_labels: Some(selector_labels(aw)),
                match_expressions: None,
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                // Never below the current capacity during a rollout.
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::String("25%".into())),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(aw)),
                    annotations: Some(
                        [(
                            "kubectl.kubernetes.io/default-container".to_string(),
                            APP_CONTAINER.to_string(),
                        )]
                        .into_iter()
                        .chain(
                            python_modules
                                .iter()
                                .map(|m| (m.annotation.to_string(), m.source.to_string())),
                        )
                        .collect(),
                    ),
                    ..Default::default()
                }),
                spec: Some(pod),
            },
            ..Default::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        api::{ServerKind, UpstreamKind, tests_support::spec},
        render::test_support::{default_rendered, rendered},
    };

    fn pod(r: &crate::render::Rendered) -> PodSpec {
        r.deployment.spec.clone().unwrap().template.spec.unwrap()
    }

    #[test]
    fn app_container_is_restricted_with_in_memory_tmp() {
        let p = pod(&default_rendered());
        let app = &p.containers[0];
        let sc = app.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_ref().unwrap(),
            &["ALL"]
        );
        assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
        assert_eq!(app.volume_mounts.as_ref().unwrap()[0].mount_path, "/tmp");
        let tmp = &p.volumes.as_ref().unwrap()[0];
        assert_eq!(
            tmp.empty_dir.as_ref().unwrap().medium.as_deref(),
            Some("Memory")
        );
    }

    #[test]
    fn env_probes_prestop_and_grace_fit_the_budget() {
        let mut s = spec();
        s.upstream.kind = UpstreamKind::AwsAlb;
        let p = pod(&rendered(s));
        let app = &p.containers[0];
        let env: Vec<_> = app
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| (e.name.as_str(), e.value.as_deref()))
            .collect();
        assert_eq!(
            env,
            [
                ("WEB_CONCURRENCY", Some("5")),
                ("PYTHON_CPU_COUNT", Some("2"))
            ]
        );
        assert_eq!(
            app.lifecycle
                .as_ref()
                .unwrap()
                .pre_stop
                .as_ref()
                .unwrap()
                .sleep
                .as_ref()
                .unwrap()
                .seconds,
            25
        );
        assert_eq!(p.termination_grace_period_seconds, Some(60));
        let startup = app.startup_probe.as_ref().unwrap();
        assert_eq!(
            startup.period_seconds.unwrap() * startup.failure_threshold.unwrap(),
            60
        );
        let liveness = app.liveness_probe.as_ref().unwrap();
        assert!(
            liveness.period_seconds.unwrap() * liveness.failure_threshold.unwrap() > 30,
            "outlives the heartbeat"
        );
        assert!(liveness.timeout_seconds.unwrap() >= 3);
        assert!(app.readiness_probe.as_ref().unwrap().http_get.is_some());
        assert_eq!(
            app.resize_policy.as_ref().unwrap()[0].restart_policy,
            "RestartContainer"
        );
        let dns = p.dns_config.unwrap().options.unwrap();
        assert_eq!(dns[0].value.as_deref(), Some("2"));
    }

    #[test]
    fn sidecar_is_native_with_its_own_uid_and_no_cpu_limit() {
        let p = pod(&default_rendered());
        let sidecar = &p.init_containers.as_ref().unwrap()[0];
        assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
        let uid = sidecar.security_context.as_ref().unwrap().run_as_user;
        assert_ne!(
            uid,
            p.containers[0]
                .security_context
                .as_ref()
                .unwrap()
                .run_as_user
        );
        assert!(
            !sidecar
                .resources
                .as_ref()
                .unwrap()
                .limits
                .as_ref()
                .unwrap()
                .contains_key("cpu")
        );
    }

    /// The kubelet's rule for projected volumes (pkg/volume/projected): with containers
    /// of different UIDs no file owner is set, so files are root's, mode `defaultMode`
    /// (the token 0600), and only an fsGroup makes them group-readable (0640).
    #[test]
    fn the_sidecar_can_read_its_projected_token() {
        let p = pod(&default_rendered());
        let sidecar = &p.init_containers.as_ref().unwrap()[0];
        let group = sidecar.security_context.as_ref().unwrap().run_as_group;
        assert_eq!(
            p.security_context.as_ref().unwrap().fs_group,
            group,
            "the sidecar's group owns the projected files"
        );
        let volume = p
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == identity::TOKEN_VOLUME)
            .unwrap();
        let mode = volume.projected.as_ref().unwrap().default_mode.unwrap();
        assert_eq!(mode & 0o040, 0o040, "group-readable: {mode:o}");
        assert_eq!(mode & 0o007, 0, "not world-readable: {mode:o}");
        let app = &p.containers[0];
        assert!(
            app.volume_mounts
                .iter()
                .flatten()
                .all(|m| m.name != identity::TOKEN_VOLUME),
            "the app, in the same fsGroup, does not mount the token"
        );
    }

    /// `diagnostics.loopHeartbeat`: the heartbeat and its `sitecustomize` travel in the
    /// template's annotations, beside the worker class, in the one downward API volume;
    /// PYTHONPATH points there, ahead of the user's own. Off, or on a sync server:
    /// neither the files nor the variable.
    #[test]
    fn the_loop_heartbeat_travels_in_the_pod_template_and_on_pythonpath() {
        use crate::render::python_modules::{HEARTBEAT, PYTHON_DIR, SITECUSTOMIZE, VOLUME};
        let with = |server: ServerKind, user_path: Option<&str>| {
            let mut s = spec();
            s.server = server;
            s.diagnostics.loop_heartbeat = true;
            s.env.extend(user_path.map(|v| EnvVar {
                name: "PYTHONPATH".into(),
                value: Some(v.into()),
                value_from: None,
            }));
            rendered(s)
        };
        let files = |r: &crate::render::Rendered| -> Vec<String> {
            pod(r)
                .volumes
                .unwrap()
                .iter()
                .filter(|v| v.name == VOLUME)
                .flat_map(|v| v.downward_api.clone().unwrap().items.unwrap())
                .map(|i| i.path)
                .collect()
        };
        let pythonpath = |r: &crate::render::Rendered| -> Vec<Option<String>> {
            pod(r).containers[0]
                .env
                .clone()
                .unwrap()
                .into_iter()
                .filter(|e| e.name == "PYTHONPATH")
                .map(|e| e.value)
                .collect()
        };
        let r = with(ServerKind::GunicornUvicorn, None);
        let annotations = r
            .deployment
            .spec
            .clone()
            .unwrap()
            .template
            .metadata
            .unwrap()
            .annotations
            .unwrap();
        assert_eq!(annotations[HEARTBEAT.annotation], HEARTBEAT.source);
        assert_eq!(annotations[SITECUSTOMIZE.annotation], SITECUSTOMIZE.source);
        assert_eq!(
            files(&r),
            [
                "apiworkload_uvicorn_worker.py",
                "apiworkload_heartbeat.py",
                "sitecustomize.py"
            ]
        );
        assert_eq!(pythonpath(&r), [Some(PYTHON_DIR.to_string())]);
        let theirs = with(ServerKind::Uvicorn, Some("/app/src"));
        assert_eq!(
            pythonpath(&theirs),
            [Some(format!("{PYTHON_DIR}:/app/src"))],
            "one variable, the user's path kept after the modules"
        );
        assert_eq!(
            files(&theirs),
            ["apiworkload_heartbeat.py", "sitecustomize.py"]
        );

        let mut off = spec();
        off.server = ServerKind::Uvicorn;
        for other in [rendered(off), with(ServerKind::GunicornGthread, None)] {
            assert!(files(&other).is_empty());
            assert!(pythonpath(&other).is_empty());
        }
    }

    /// gunicorn-uvicorn loads the operator's worker class from the pod's own annotation,
    /// written out by the downward API where `--pythonpath` points; other servers and
    /// an unlimited spec get neither the annotation nor the volume.
    #[test]
    fn the_uvicorn_worker_class_travels_in_the_pod_template() {
        use crate::render::worker_class::{
            ANNOTATION, MODULE_SOURCE, PYTHON_DIR, VOLUME, WORKER_CLASS,
        };
        let annotations = |r: &crate::render::Rendered| {
            let template = r.deployment.spec.clone().unwrap().template;
            template.metadata.unwrap().annotations.unwrap()
        };
        let r = default_rendered();
        assert_eq!(annotations(&r)[ANNOTATION], MODULE_SOURCE);
        let p = pod(&r);
        let volume = p
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == VOLUME);
        let items = volume.unwrap().downward_api.clone().unwrap().items.unwrap();
        assert_eq!(
            items[0].field_ref.as_ref().unwrap().field_path,
            format!("metadata.annotations['{ANNOTATION}']")
        );
        let app = &p.containers[0];
        let mounts = app.volume_mounts.as_ref().unwrap();
        let mount = mounts.iter().find(|m| m.name == VOLUME).unwrap();
        assert_eq!(
            (mount.mount_path.as_str(), mount.read_only),
            (PYTHON_DIR, Some(true))
        );
        assert!(
            app.command
                .as_ref()
                .unwrap()
                .iter()
                .any(|a| a == WORKER_CLASS)
        );

        let mut unlimited = spec();
        unlimited.concurrency.limit = Some(0);
        let mut uvicorn = spec();
        uvicorn.server = ServerKind::Uvicorn;
        for other in [rendered(unlimited), rendered(uvicorn)] {
            assert!(!annotations(&other).contains_key(ANNOTATION));
            assert!(
                pod(&other)
                    .volumes
                    .unwrap()
                    .iter()
                    .all(|v| v.name != VOLUME)
            );
        }
    }

    #[test]
    fn diagnostics_off_means_no_sidecar_and_uvicorn_no_resize_restart() {
        let mut s = spec();
        s.diagnostics.enabled = false;
        s.server = ServerKind::Uvicorn;
        let p = pod(&rendered(s));
        assert!(p.init_containers.is_none());
        assert!(
            p.containers[0].resize_policy.is_none(),
            "single-process count does not follow CPU"
        );
    }
}
