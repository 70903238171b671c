//! Keeps the APIService of the metrics API trusting the generated CA.
//!
//! With the default certificate (see [`super::serving_secret`]), the apiserver can verify the
//! metrics API only if the APIService carries that CA as `spec.caBundle`. The operator watches
//! the APIService by name and, whenever its `caBundle` differs from the CA (a fresh install, a
//! re-applied manifest, a replaced Secret), sets it and drops `insecureSkipTLSVerify` (the two
//! are mutually exclusive). An APIService that already trusts the CA is left alone: nothing is
//! written while nothing changes. Every replica serves the same certificate, so every replica
//! would write the same value: there is nothing to fight over.

use futures::StreamExt;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde_json::{Value, json};

/// `bytes` as the API writes a `[]byte` field: standard base64 (what k8s-openapi's ByteString
/// serializes to, so no second encoder is needed).
fn base64(bytes: &[u8]) -> String {
    match serde_json::to_value(k8s_openapi::ByteString(bytes.to_vec())) {
        Ok(Value::String(text)) => text,
        _ => String::new(),
    }
}

fn api_resource() -> ApiResource {
    ApiResource {
        group: "apiregistration.k8s.io".to_string(),
        version: "v1".to_string(),
        api_version: "apiregistration.k8s.io/v1".to_string(),
        kind: "APIService".to_string(),
        plural: "apiservices".to_string(),
    }
}

/// The merge patch that makes `spec` trust `ca_pem`, or None when it already does.
pub fn ca_bundle_patch(spec: &Value, ca_pem: &str) -> Option<Value> {
    let wanted = base64(ca_pem.as_bytes());
    let current = spec.get("caBundle").and_then(Value::as_str);
    let insecure = spec
        .get("insecureSkipTLSVerify")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if current == Some(wanted.as_str()) && !insecure {
        return None;
    }
    Some(json!({"spec": {"caBundle": wanted, "insecureSkipTLSVerify": null}}))
}

/// Watches APIService `name` for as long as the process runs and keeps its `caBundle` at
/// `ca_pem`. A missing APIService is waited for; errors are logged and retried with backoff.
pub async fn keep_ca_bundle(client: Client, name: String, ca_pem: String) {
    let api: Api<DynamicObject> = Api::all_with(client, &api_resource());
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut changes = watcher(api.clone(), config)
        .default_backoff()
        .applied_objects()
        .boxed();
    while let Some(event) = changes.next().await {
        let apiservice = match event {
            Ok(object) => object,
            Err(e) => {
                tracing::warn!(error = %e, apiservice = %name, "watching the APIService");
                continue;
            }
        };
        let spec = apiservice.data.get("spec").cloned().unwrap_or(Value::Null);
        let Some(patch) = ca_bundle_patch(&spec, &ca_pem) else {
            continue;
        };
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                tracing::info!(apiservice = %name, "APIService caBundle set to the metrics API's CA")
            }
            Err(e) => tracing::warn!(
                error = %e,
                apiservice = %name,
                "cannot set the APIService's caBundle (the operator needs patch on apiservices)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_differing_or_insecure_apiservice_is_patched() {
        let ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let encoded = base64(ca.as_bytes());
        assert!(encoded.starts_with("LS0tLS1"), "{encoded}");
        assert_eq!(
            ca_bundle_patch(&json!({"caBundle": encoded}), ca),
            None,
            "already trusted: nothing to write"
        );
        let fresh = ca_bundle_patch(&json!({"insecureSkipTLSVerify": true}), ca).unwrap();
        assert_eq!(fresh["spec"]["caBundle"], encoded);
        assert_eq!(fresh["spec"]["insecureSkipTLSVerify"], Value::Null);
        assert!(ca_bundle_patch(&json!({"caBundle": "b2xk"}), ca).is_some());
        assert!(
            ca_bundle_patch(
                &json!({"caBundle": encoded, "insecureSkipTLSVerify": true}),
                ca
            )
            .is_some()
        );
    }
}
