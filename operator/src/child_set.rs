//! One workload's children as a set (stackable operator-rs's `ClusterResources`): each
//! rendered child applied in order, each one no longer wanted deleted, reading a child
//! only when the watches cannot vouch for it. The per-child decisions are pure
//! ([`before_read`], [`after_read`]) and tested by feeding them values.

use k8s_openapi::api::{
    apps::v1::Deployment,
    autoscaling::v2::HorizontalPodAutoscaler,
    core::v1::{Service, ServiceAccount},
    policy::v1::PodDisruptionBudget,
    rbac::v1::RoleBinding,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{
        ApiResource, DeleteParams, DynamicObject, GetParams, GroupVersionKind, Patch, PatchParams,
    },
};
use serde::{Serialize, de::DeserializeOwned};

use crate::{
    api::ApiWorkload,
    applied::{stamp, up_to_date},
    children::Key,
    controller::{Context, Error, FIELD_MANAGER},
    render::{Autoscaler, Rendered},
};

/// What the watches say of a child, as far as the decision goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Seen {
    /// As we last applied or verified it, for the desired object and owner.
    pub unchanged: bool,
    /// Certainly not there (its kind listed, nothing of the name labelled).
    pub absent: bool,
    /// Controlled by another owner.
    pub someone_elses: bool,
}

/// What to do about a child before reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Before {
    /// Nothing: it is as we wrote it, or there is nothing of ours to delete.
    Skip,
    /// A conditional create (no read): no watch has seen it.
    Create,
    /// Read it, then [`after_read`].
    Read,
}

pub fn before_read(desired: bool, seen: Seen) -> Before {
    match desired {
        true if seen.unchanged => Before::Skip,
        true if seen.absent => Before::Create,
        true => Before::Read,
        // Nothing labelled of that name, or someone else's: nothing to delete.
        false if seen.absent || seen.someone_elses => Before::Skip,
        false => Before::Read,
    }
}

/// What to do about a child once read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Someone else's object holds the name: never adopted, never written.
    Conflict,
    /// Ours, and already as desired.
    UpToDate,
    Apply,
    /// Ours and no longer wanted.
    Delete,
    /// Not wanted and not ours (or not there): left alone.
    Nothing,
}

/// `owned`: None when nothing of the name exists, else whether this workload controls
/// it; `current`: whether the live object already matches the desired one.
pub fn after_read(desired: bool, owned: Option<bool>, current: bool) -> After {
    match (desired, owned) {
        (true, Some(false)) => After::Conflict,
        (true, Some(true)) if current => After::UpToDate,
        (true, _) => After::Apply,
        (false, Some(true)) => After::Delete,
        (false, _) => After::Nothing,
    }
}

pub fn scaled_object_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("keda.sh", "v1alpha1", "ScaledObject"),
        "scaledobjects",
    )
}

/// Whether the cluster serves KEDA ScaledObjects.
pub async fn keda_installed(client: &Client) -> bool {
    client
        .list_api_group_resources("keda.sh/v1alpha1")
        .await
        .is_ok_and(|list| list.resources.iter().any(|r| r.name == "scaledobjects"))
}

fn controlled_by(
    meta_owner: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference],
    aw: &ApiWorkload,
) -> bool {
    let uid = aw.uid();
    meta_owner
        .iter()
        .any(|o| o.controller == Some(true) && Some(&o.uid) == uid.as_ref())
}

/// What one child step did: whether it wrote, and the live object when it read or
/// wrote one.
#[derive(Debug)]
pub struct Synced<K> {
    pub wrote: bool,
    pub live: Option<K>,
}

impl<K> Synced<K> {
    fn nothing() -> Self {
        Synced {
            wrote: false,
            live: None,
        }
    }
}

/// Applies `desired` when the live object differs, deletes an owned leftover when
/// nothing is desired. Reads the live object only when the index cannot vouch for it
/// ([`before_read`]); what to do once read is [`after_read`].
async fn sync<K>(
    api: &Api<K>,
    aw: &ApiWorkload,
    kind: &'static str,
    desired: Option<&K>,
    ctx: &Context,
) -> Result<Synced<K>, Error>
where
    K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let name = aw.name_any();
    let key = Key::new(kind, &aw.namespace().ok_or(Error::NoNamespace)?, &name);
    let owner = aw.uid().unwrap_or_default();
    let desired = match desired {
        Some(d) => {
            let mut json = serde_json::to_value(d)?;
            let print = stamp(&mut json);
            Some((json, print))
        }
        None => None,
    };
    let index = &ctx.children;
    let seen = Seen {
        unchanged: desired
            .as_ref()
            .is_some_and(|(_, print)| index.unchanged(&key, print, &owner)),
        absent: index.absent(&key),
        someone_elses: index.controller(&key).is_some_and(|c| c != owner),
    };
    match (before_read(desired.is_some(), seen), &desired) {
        (Before::Skip, _) => return Ok(Synced::nothing()),
        // One request, on condition that nothing of that name exists: when an
        // unlabelled object of the name is there after all, someone else's perhaps, the
        // server refuses and the read below decides.
        (Before::Create, Some((json, print))) => {
            ctx.ensure_leader()?;
            match api
                .patch(
                    &name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&create_only(json)),
                )
                .await
            {
                Ok(created) => {
                    ctx.metrics.count_write(kind);
                    index.verified(key, print.clone(), created.meta());
                    return Ok(Synced {
                        wrote: true,
                        live: Some(created),
                    });
                }
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(Error::from_apply(kind, &name, e)),
            }
        }
        (Before::Read | Before::Create, _) => {}
    }
    // From the API server's watch cache (resourceVersion=0): no etcd read. A cache a
    // moment behind at worst costs one redundant (idempotent) apply.
    let live = match api.get_with(&name, &GetParams::any()).await {
        Ok(live) => Some(live),
        Err(kube::Error::Api(e)) if e.code == 404 => None,
        Err(e) => return Err(e.into()),
    };
    let owned = live
        .as_ref()
        .map(|l| controlled_by(l.meta().owner_references.as_deref().unwrap_or_default(), aw));
    let current = match (&desired, &live) {
        (Some((json, _)), Some(live)) => up_to_date(json, &serde_json::to_value(live)?),
        _ => false,
    };
    match (after_read(desired.is_some(), owned, current), desired) {
        (After::Conflict, _) => Err(Error::ChildConflict { kind, name }),
        (After::UpToDate, Some((_, print))) => {
            if let Some(live) = &live {
                index.verified(key, print, live.meta());
            }
            Ok(Synced { wrote: false, live })
        }
        (After::Apply, Some((json, print))) => {
            ctx.ensure_leader()?;
            let applied = api
                .patch(
                    &name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&json),
                )
                .await
                .map_err(|e| Error::from_apply(kind, &name, e))?;
            ctx.metrics.count_write(kind);
            index.verified(key, print, applied.meta());
            Ok(Synced {
                wrote: true,
                live: Some(applied),
            })
        }
        (After::Delete, _) => {
            ctx.ensure_leader()?;
            match api.delete(&name, &DeleteParams::background()).await {
                // Already gone (deleted meanwhile): nothing left to do.
                Err(kube::Error::Api(e)) if e.code == 404 => return Ok(Synced::nothing()),
                result => result?,
            };
            ctx.metrics.count_write(kind);
            index.forget(&key);
            Ok(Synced {
                wrote: true,
                live: None,
            })
        }
        // Nothing, or (never: after_read wants a desired object for them) an apply
        // without one.
        (After::Nothing | After::UpToDate | After::Apply, _) => Ok(Synced::nothing()),
    }
}

/// `desired` as an apply that only creates. An apply carrying a resourceVersion is
/// conditional on the live object being at that version, and no object is ever at
/// version 1 (etcd's first write is revision 2): the server creates the object when
/// none exists and answers 409 Conflict when one does.
fn create_only(desired: &serde_json::Value) -> serde_json::Value {
    let mut json = desired.clone();
    if let Some(meta) = json.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        meta.insert("resourceVersion".into(), "1".into());
    }
    json
}

/// Applies every child of one workload in order (the pods' identity, the Service, the
/// Deployment, the PDB, exactly one autoscaler) and deletes those no longer wanted.
/// Stops at the first child that fails: nothing after it is applied.
pub async fn apply_all(
    aw: &ApiWorkload,
    rendered: &Rendered,
    keda: bool,
    ctx: &Context,
) -> Result<(bool, Option<Deployment>), Error> {
    let ns = aw.namespace().ok_or(Error::NoNamespace)?;
    let client = &ctx.client;
    let hpa = match &rendered.autoscaler {
        Autoscaler::Hpa(h) => Some(h.as_ref()),
        _ => None,
    };
    // The pods' ServiceAccount before the Deployment, or the first pods are refused.
    let (account, binding) = rendered.identity.as_ref().map(|(a, b)| (a, b)).unzip();
    let mut wrote = sync(
        &Api::<ServiceAccount>::namespaced(client.clone(), &ns),
        aw,
        "ServiceAccount",
        account,
        ctx,
    )
    .await?
    .wrote;
    wrote |= sync(
        &Api::<RoleBinding>::namespaced(client.clone(), &ns),
        aw,
        "RoleBinding",
        binding,
        ctx,
    )
    .await?
    .wrote;
    // Service next: endpoints exist by the time pods turn ready.
    wrote |= sync(
        &Api::<Service>::namespaced(client.clone(), &ns),
        aw,
        "Service",
        Some(&rendered.service),
        ctx,
    )
    .await?
    .wrote;
    let deployment = sync(
        &Api::<Deployment>::namespaced(client.clone(), &ns),
        aw,
        "Deployment",
        Some(&rendered.deployment),
        ctx,
    )
    .await?;
    wrote |= deployment.wrote;
    wrote |= sync(
        &Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns),
        aw,
        "PodDisruptionBudget",
        rendered.pdb.as_ref(),
        ctx,
    )
    .await?
    .wrote;
    wrote |= sync(
        &Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), &ns),
        aw,
        "HorizontalPodAutoscaler",
        hpa,
        ctx,
    )
    .await?
    .wrote;
    if keda {
        // Exactly one autoscaler: a ScaledObject replaces the HPA and vice versa.
        let api =
            Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &scaled_object_resource());
        let desired = match &rendered.autoscaler {
            Autoscaler::ScaledObject(v) => {
                Some(serde_json::from_value::<DynamicObject>(v.clone())?)
            }
            _ => None,
        };
        wrote |= sync(&api, aw, "ScaledObject", desired.as_ref(), ctx)
            .await?
            .wrote;
    }
    Ok((wrote, deployment.live))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn before_reading_a_child() {
        let seen = |unchanged, absent, someone_elses| Seen {
            unchanged,
            absent,
            someone_elses,
        };
        for (desired, s, want) in [
            (true, seen(true, false, false), Before::Skip),
            (true, seen(false, true, false), Before::Create),
            (true, seen(false, false, false), Before::Read),
            // A name someone else holds is read, so the conflict is reported.
            (true, seen(false, false, true), Before::Read),
            (false, seen(false, true, false), Before::Skip),
            (false, seen(false, false, true), Before::Skip),
            (false, seen(false, false, false), Before::Read),
        ] {
            assert_eq!(before_read(desired, s), want, "{desired} {s:?}");
        }
    }

    #[test]
    fn after_reading_a_child() {
        for (desired, owned, current, want) in [
            (true, Some(false), false, After::Conflict),
            (true, Some(false), true, After::Conflict),
            (true, Some(true), true, After::UpToDate),
            (true, Some(true), false, After::Apply),
            (true, None, false, After::Apply),
            (false, Some(true), false, After::Delete),
            (false, Some(false), false, After::Nothing),
            (false, None, false, After::Nothing),
        ] {
            assert_eq!(
                after_read(desired, owned, current),
                want,
                "{desired} {owned:?} {current}"
            );
        }
    }
}
