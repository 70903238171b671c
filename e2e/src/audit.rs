//! The apiserver's audit log, to tell apart whose requests reached it and when: the
//! `apiserver_request_total` metric does not say who asked.
//!
//! The policy records writes by ServiceAccounts outside kube-system (the identities tests give
//! the operators they start), one line each when the answer is sent; the control plane's own
//! writes (controllers, the scheduler, kwok's nodes) are left out so that the log stays small.

use std::path::Path;

use anyhow::{Context, Result};
use k8s_openapi::jiff::Timestamp;
use serde::Deserialize;

/// The audit policy the local cluster's apiserver runs with.
pub const POLICY: &str = r#"apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: None
    userGroups: ["system:serviceaccounts:kube-system"]
  - level: Metadata
    userGroups: ["system:serviceaccounts"]
    verbs: ["create", "update", "patch", "delete", "deletecollection"]
  - level: None
"#;

/// One audited request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEvent {
    /// `system:serviceaccount:<namespace>:<name>`.
    pub user: String,
    /// The Kubernetes verb (`create`, `update`, `patch` — server-side apply included —, `delete`).
    pub verb: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    /// The answer's status code.
    pub code: u16,
    /// When the apiserver received the request.
    pub received: Timestamp,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawEvent {
    stage: String,
    verb: String,
    user: RawUser,
    #[serde(default)]
    object_ref: Option<RawObjectRef>,
    #[serde(default)]
    response_status: Option<RawStatus>,
    request_received_timestamp: String,
}

#[derive(Deserialize)]
struct RawUser {
    username: String,
}

#[derive(Deserialize, Default)]
struct RawObjectRef {
    #[serde(default)]
    resource: String,
    #[serde(default)]
    subresource: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    name: String,
}

#[derive(Deserialize)]
struct RawStatus {
    #[serde(default)]
    code: u16,
}

/// The completed requests in an audit log's text (JSON lines); lines of other stages, and
/// lines that do not parse (one being written), are skipped.
pub fn parse(text: &str) -> Vec<AuditEvent> {
    text.lines()
        .filter_map(|line| serde_json::from_str::<RawEvent>(line).ok())
        .filter(|e| e.stage == "ResponseComplete")
        .filter_map(|e| {
            let object = e.object_ref.unwrap_or_default();
            Some(AuditEvent {
                user: e.user.username,
                verb: e.verb,
                resource: object.resource,
                subresource: object.subresource,
                namespace: object.namespace,
                name: object.name,
                code: e.response_status.map_or(0, |s| s.code),
                received: e.request_received_timestamp.parse().ok()?,
            })
        })
        .collect()
}

/// The completed requests in the audit log at `path`.
pub fn read(path: &Path) -> Result<Vec<AuditEvent>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the audit log {}", path.display()))?;
    Ok(parse(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_who_wrote_what_when_from_completed_requests() {
        let text = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"1","stage":"ResponseComplete","requestURI":"/apis/lexserve.io/v1alpha1/namespaces/ns/inferenceservices/m/status?fieldManager=lexserve-operator\u0026force=true","verb":"patch","user":{"username":"system:serviceaccount:ns:replica-a","groups":["system:serviceaccounts","system:serviceaccounts:ns","system:authenticated"]},"sourceIPs":["127.0.0.1"],"userAgent":"kube-rs/5","objectRef":{"resource":"inferenceservices","namespace":"ns","name":"m","apiGroup":"lexserve.io","apiVersion":"v1alpha1","subresource":"status"},"responseStatus":{"metadata":{},"code":200},"requestReceivedTimestamp":"2026-12-05T10:00:00.123456Z","stageTimestamp":"2026-12-05T10:00:00.130000Z"}
{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"2","stage":"ResponseComplete","requestURI":"/apis/coordination.k8s.io/v1/namespaces/default/leases/l","verb":"update","user":{"username":"system:serviceaccount:ns:replica-b"},"objectRef":{"resource":"leases","namespace":"default","name":"l","apiGroup":"coordination.k8s.io","apiVersion":"v1"},"responseStatus":{"metadata":{},"status":"Failure","reason":"Conflict","code":409},"requestReceivedTimestamp":"2026-12-05T10:00:01.000000Z","stageTimestamp":"2026-12-05T10:00:01.010000Z"}
{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"3","stage":"Panic","verb":"create","user":{"username":"x"},"requestReceivedTimestamp":"2026-12-05T10:00:02.000000Z"}
{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metad"#;
        let events = parse(text);
        assert_eq!(
            events,
            vec![
                AuditEvent {
                    user: "system:serviceaccount:ns:replica-a".to_string(),
                    verb: "patch".to_string(),
                    resource: "inferenceservices".to_string(),
                    subresource: "status".to_string(),
                    namespace: "ns".to_string(),
                    name: "m".to_string(),
                    code: 200,
                    received: "2026-12-05T10:00:00.123456Z".parse().expect("timestamp"),
                },
                AuditEvent {
                    user: "system:serviceaccount:ns:replica-b".to_string(),
                    verb: "update".to_string(),
                    resource: "leases".to_string(),
                    subresource: String::new(),
                    namespace: "default".to_string(),
                    name: "l".to_string(),
                    code: 409,
                    received: "2026-12-05T10:00:01Z".parse().expect("timestamp"),
                },
            ]
        );
    }
}
