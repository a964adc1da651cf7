//! An ApiWorkload the operator cannot decode (a value the CRD once let through, or one
//! written under an older CRD): reported on that object alone, never allowed to stop the
//! watch that serves every other namespace.
//!
//! The watch decodes each object behind kube's `DeserializeGuard`; a failure arrives here
//! with the object's metadata. Nothing is applied for it (its running children keep their
//! last good configuration); `ConfigConsistent=False` names the field and the fix, under
//! a field manager of its own so that the rest of the status (what still runs) stays.

use k8s_openapi::{
    api::core::v1::ObjectReference,
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use kube::{
    Api, Resource,
    api::{ApiResource, DynamicObject, Patch, PatchParams},
    core::error_boundary::InvalidObject,
    runtime::events::{Event, EventType},
};
use serde_json::{Value, json};
use tracing::warn;

use crate::{
    api::{ApiWorkload, ApiWorkloadSpec},
    controller::{Context, Error},
    log::bounded,
};

/// Its own field manager: applying only this condition must not drop the status fields
/// the main manager owns (workers, effective timings: what still runs).
pub const UNREADABLE_MANAGER: &str = "apiworkload-operator-unreadable";
/// The reason on the condition, the Event and the `Reason` column.
pub const REASON: &str = "UnreadableSpec";
/// Longest value or decoder message quoted back (a hostile value can be long).
const MAX_QUOTED: usize = 200;

/// The spec field that fails to decode and the decoder's message, e.g.
/// (`spec.diagnostics.stallThreshold`, `invalid duration "…": expected e.g. 30s…`).
pub fn locate(spec: Option<&Value>) -> (String, String) {
    let Some(spec) = spec else {
        return ("spec".into(), "the object has no spec".into());
    };
    match serde_path_to_error::deserialize::<_, ApiWorkloadSpec>(spec) {
        Ok(_) => (
            "spec".into(),
            "it did not decode when the watch delivered it".into(),
        ),
        Err(e) => {
            let path = e.path().to_string();
            let field = if path == "." {
                "spec".into()
            } else {
                format!("spec.{path}")
            };
            (field, bounded(&e.into_inner().to_string(), MAX_QUOTED))
        }
    }
}

/// The condition's message: which field, what the decoder said, and what it means.
pub fn message(field: &str, problem: &str) -> String {
    format!(
        "{field}: {problem}. The operator cannot read this ApiWorkload, so nothing of it is applied and its running objects keep their last good configuration: correct {field} (kubectl explain apiworkload.{field} shows what it accepts)"
    )
}

/// Reports one undecodable ApiWorkload on itself (condition and Warning Event, once per
/// distinct problem). Only a change to the object can make it readable, so it waits for one.
pub async fn report(invalid: &InvalidObject, ctx: &Context) -> Result<(), Error> {
    let meta = &invalid.metadata;
    let ns = meta.namespace.clone().ok_or(Error::NoNamespace)?;
    let name = meta.name.clone().unwrap_or_default();
    let resource = ApiResource::erase::<ApiWorkload>(&());
    let api = Api::<DynamicObject>::namespaced_with(ctx.client.clone(), &ns, &resource);
    let Some(live) = api.get_opt(&name).await? else {
        return Ok(()); // deleted meanwhile
    };
    let (field, problem) = locate(live.data.get("spec"));
    let message = message(&field, &problem);
    warn!(apiworkload = %name, namespace = %ns, field = %field, error = %problem, "cannot decode ApiWorkload; reporting it on the object and skipping it");

    let previous: Vec<Condition> = live
        .data
        .pointer("/status/conditions")
        .cloned()
        .and_then(|c| serde_json::from_value(c).ok())
        .unwrap_or_default();
    let current = previous.iter().find(|c| c.type_ == "ConfigConsistent");
    if current.is_some_and(|c| {
        c.status == "False"
            && c.reason == REASON
            && c.message == message
            && c.observed_generation == meta.generation
    }) {
        return Ok(()); // already said
    }
    let condition = Condition {
        type_: "ConfigConsistent".into(),
        status: "False".into(),
        reason: REASON.into(),
        message: message.clone(),
        observed_generation: meta.generation,
        last_transition_time: match current {
            Some(c) if c.status == "False" => c.last_transition_time.clone(),
            _ => Time(Timestamp::now()),
        },
    };
    let patch = json!({
        "apiVersion": ApiWorkload::api_version(&()),
        "kind": ApiWorkload::kind(&()),
        "status": {"reason": REASON, "conditions": [condition]},
    });
    ctx.ensure_leader()?;
    api.patch_status(
        &name,
        &PatchParams::apply(UNREADABLE_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    ctx.metrics.count_write("status");
    let reference = ObjectReference {
        api_version: Some(ApiWorkload::api_version(&()).into()),
        kind: Some(ApiWorkload::kind(&()).into()),
        name: Some(name),
        namespace: Some(ns),
        uid: meta.uid.clone(),
        ..Default::default()
    };
    let event = Event {
        type_: EventType::Warning,
        reason: REASON.into(),
        note: Some(bounded(&message, 1000)),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &reference).await {
        warn!(error = %bounded(&e.to_string(), crate::log::MAX_LOGGED), "could not publish event");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_the_field_that_does_not_decode() {
        let spec = json!({
            "image": "registry.example/app:1", "app": "app.main:app",
            "diagnostics": {"stallThreshold": "99999999999999999999999h"},
        });
        let (field, problem) = locate(Some(&spec));
        assert_eq!(field, "spec.diagnostics.stallThreshold");
        assert!(problem.contains("invalid duration"), "{problem}");
        let m = message(&field, &problem);
        assert!(m.starts_with("spec.diagnostics.stallThreshold: invalid duration"));
    }

    #[test]
    fn a_decodable_or_missing_spec_still_gets_an_answer() {
        let ok = json!({"image": "i", "app": "a:b"});
        assert_eq!(locate(Some(&ok)).0, "spec");
        assert_eq!(locate(None).0, "spec");
    }
}
