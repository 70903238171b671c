//! Requests as the apiserver counts them (`apiserver_request_total`), to prove that an operator
//! left alone writes nothing and to count its reads; and counters of the operator's own metrics.

/// Sums `apiserver_request_total` over write verbs, for the given resources, leaving out the
/// status subresource of everything but InferenceServices (kube-controller-manager writes the
/// children's status; the operator writes only the InferenceService's).
pub fn write_requests(metrics: &str, resources: &[&str]) -> f64 {
    apiserver_requests(metrics, |request| {
        let write = matches!(request.verb, "POST" | "PUT" | "PATCH" | "DELETE" | "APPLY");
        write
            && resources.contains(&request.resource)
            && (request.subresource.is_empty() || request.resource == "inferenceservices")
    })
}

/// Sums `apiserver_request_total` over the given verbs (`GET`, `LIST`, ...; watches are their
/// own verb) and resources, subresources included.
pub fn requests(metrics: &str, verbs: &[&str], resources: &[&str]) -> f64 {
    apiserver_requests(metrics, |request| {
        verbs.contains(&request.verb) && resources.contains(&request.resource)
    })
}

/// The labels of one `apiserver_request_total` series that say what was asked.
pub struct Request<'a> {
    pub verb: &'a str,
    pub resource: &'a str,
    pub subresource: &'a str,
}

/// Sums the `apiserver_request_total` series that `counted` keeps.
pub fn apiserver_requests(metrics: &str, counted: impl Fn(&Request<'_>) -> bool) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter_map(|line| {
            let (labels, value) = line.rsplit_once(' ')?;
            let label = |name: &str| {
                let key = format!("{name}=\"");
                let start = labels.find(&key)? + key.len();
                let end = labels[start..].find('"')? + start;
                Some(&labels[start..end])
            };
            let request = Request {
                verb: label("verb")?,
                resource: label("resource")?,
                subresource: label("subresource").unwrap_or_default(),
            };
            counted(&request)
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// Sums a counter of a process's own `/metrics` (the operator's) over its label sets, or over
/// those whose line contains `filter` (`""`: all).
pub fn counter(metrics: &str, name: &str, filter: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
                && l.contains(filter)
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
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
        assert_eq!(requests(text, &["GET"], &["deployments"]), 99.0);
        assert_eq!(requests(text, &["GET", "PUT"], &["deployments"]), 139.0);
    }

    #[test]
    fn counters_sum_over_label_sets_of_that_name_only() {
        let text = r#"
# TYPE lexserve_operator_api_requests_total counter
lexserve_operator_api_requests_total{verb="GET",resource="pods"} 2
lexserve_operator_api_requests_total{verb="APPLY",resource="deployments"} 5
lexserve_operator_api_requests_total_created{verb="GET",resource="pods"} 1700000000
lexserve_operator_reconciliations_total 7
"#;
        let name = "lexserve_operator_api_requests_total";
        assert_eq!(counter(text, name, ""), 7.0);
        assert_eq!(counter(text, name, "verb=\"GET\""), 2.0);
        assert_eq!(
            counter(text, "lexserve_operator_reconciliations_total", ""),
            7.0
        );
    }
}
