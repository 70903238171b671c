//! Write requests as the apiserver counts them (`apiserver_request_total`), to prove that an
//! operator left alone writes nothing.

/// Sums `apiserver_request_total` over write verbs, for the given resources, leaving out the
/// status subresource of everything but InferenceServices (kube-controller-manager writes the
/// children's status; the operator writes only the InferenceService's).
pub fn write_requests(metrics: &str, resources: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter_map(|line| {
            let (labels, value) = line.rsplit_once(' ')?;
            let label = |name: &str| {
                let key = format!("{name}=\"");
                let start = labels.find(&key)? + key.len();
                let end = labels[start..].find('"')? + start;
                Some(labels[start..end].to_string())
            };
            let verb = label("verb")?;
            let resource = label("resource")?;
            let subresource = label("subresource").unwrap_or_default();
            let write = matches!(verb.as_str(), "POST" | "PUT" | "PATCH" | "DELETE" | "APPLY");
            let counted = resources.contains(&resource.as_str())
                && (subresource.is_empty() || resource == "inferenceservices");
            (write && counted)
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// The resources lexserve-operator writes.
pub const OPERATOR_WRITTEN: &[&str] = &[
    "inferenceservices",
    "deployments",
    "services",
    "configmaps",
    "horizontalpodautoscalers",
    "poddisruptionbudgets",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_writes_of_the_given_resources_only() {
        let text = r#"
apiserver_request_total{code="200",component="apiserver",dry_run="",group="apps",resource="deployments",scope="resource",subresource="",verb="APPLY",version="v1"} 3
apiserver_request_total{code="200",component="apiserver",dry_run="",group="apps",resource="deployments",scope="resource",subresource="status",verb="PUT",version="v1"} 40
apiserver_request_total{code="200",component="apiserver",dry_run="",group="apps",resource="deployments",scope="resource",subresource="",verb="GET",version="v1"} 99
apiserver_request_total{code="200",component="apiserver",dry_run="",group="lexserve.io",resource="inferenceservices",scope="resource",subresource="status",verb="PATCH",version="v1alpha1"} 2
apiserver_request_total{code="201",component="apiserver",dry_run="",group="coordination.k8s.io",resource="leases",scope="resource",subresource="",verb="PUT",version="v1"} 500
"#;
        assert_eq!(write_requests(text, OPERATOR_WRITTEN), 5.0);
        assert_eq!(write_requests(text, &["deployments"]), 3.0);
        assert_eq!(write_requests(text, &["leases"]), 500.0);
    }
}
