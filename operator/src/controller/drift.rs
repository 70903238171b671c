//! Whether a live child still holds what the operator built: the fields the operator sets,
//! compared value by value, ignoring everything it does not set (server defaults, status,
//! fields of other managers). Pure.
//!
//! The rules follow what server-side apply would restore:
//! - an object holds a desired object when it holds each of its keys;
//! - a zero value (`null`, `false`, `0`, `""`, `[]`, `{}`) may be absent: the apiserver drops
//!   many of them;
//! - a list of objects holds a desired list when each desired item has a live item holding it
//!   (in any order: other managers may add items);
//! - a list of scalars (`args`, `command`) must be equal;
//! - quantities (under `limits`, `requests`, `hard`; `sizeLimit`, `averageValue`) compare by
//!   value (`0.5` and `500m` are one quantity; the apiserver writes the canonical form).

use serde_json::Value;

/// The first place where `live` does not hold what `desired` sets, as a path
/// (`spec.template.spec.containers[0].image`), or None when it holds all of it.
pub fn first_difference(desired: &Value, live: &Value) -> Option<String> {
    let Value::Object(fields) = desired else {
        return (!holds(desired, live, false)).then(String::new);
    };
    fields
        .iter()
        // The type is in the request path; status is not ours to set.
        .filter(|(key, _)| !matches!(key.as_str(), "apiVersion" | "kind" | "status"))
        .find_map(|(key, value)| difference_at(key.clone(), value, live.get(key), false))
}

fn difference_at(
    path: String,
    desired: &Value,
    live: Option<&Value>,
    quantity: bool,
) -> Option<String> {
    let Some(live) = live.filter(|l| !l.is_null()) else {
        return (!is_zero(desired)).then_some(path);
    };
    match (desired, live) {
        (Value::Object(fields), Value::Object(_)) => fields.iter().find_map(|(key, value)| {
            // Inside `limits` (and the like) every value is a quantity.
            let quantity = quantity || is_quantity_key(key);
            difference_at(format!("{path}.{key}"), value, live.get(key), quantity)
        }),
        (Value::Array(items), Value::Array(live_items)) if items.iter().any(|i| i.is_object()) => {
            items.iter().enumerate().find_map(|(index, item)| {
                let held = live_items
                    .iter()
                    .any(|l| difference_at(String::new(), item, Some(l), quantity).is_none());
                (!held).then(|| format!("{path}[{index}]"))
            })
        }
        _ => (!holds(desired, live, quantity)).then_some(path),
    }
}

/// Whether two leaves (or lists of scalars) are the same value.
fn holds(desired: &Value, live: &Value, quantity: bool) -> bool {
    if desired == live {
        return true;
    }
    match (desired, live) {
        (Value::String(d), Value::String(l)) if quantity => {
            matches!((parse_quantity(d), parse_quantity(l)), (Some(a), Some(b)) if (a - b).abs() <= 1e-9 * a.abs().max(b.abs()))
        }
        (Value::Number(d), Value::Number(l)) => d.as_f64() == l.as_f64(),
        _ => false,
    }
}

/// Keys whose value is a quantity, or a map of quantities.
fn is_quantity_key(key: &str) -> bool {
    matches!(
        key,
        "limits" | "requests" | "hard" | "sizeLimit" | "averageValue"
    )
}

fn is_zero(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

/// A Kubernetes quantity's value: a decimal number with an optional binary (`Ki`..`Ei`) or
/// decimal (`n`, `u`, `m`, `k`, `M`..`E`) suffix, or an exponent (`1e3`).
pub fn parse_quantity(text: &str) -> Option<f64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exponent => {
            let exp: i32 = exponent.strip_prefix(['e', 'E'])?.parse().ok()?;
            10f64.powi(exp)
        }
    };
    Some(number * factor)
}

/// The values `live` holds at the places `desired` sets, in `desired`'s shape. Two projections are equal when nothing the operator sets changed,
/// whatever the apiserver normalized: the apply records it to recognize its own result.
/// Items of lists are matched by `name` where they have one, else by position.
pub fn project(desired: &Value, live: &Value) -> Value {
    match (desired, live) {
        (Value::Object(fields), Value::Object(_)) => Value::Object(
            fields
                .iter()
                .filter(|(key, _)| !matches!(key.as_str(), "status"))
                .map(|(key, value)| {
                    let live = live.get(key).unwrap_or(&Value::Null);
                    (key.clone(), project(value, live))
                })
                .collect(),
        ),
        (Value::Array(items), Value::Array(live_items)) if items.iter().any(|i| i.is_object()) => {
            Value::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(index, item)| {
                        // The item of the same name (containers, env, volumes), else the one
                        // at the same position.
                        let named = item.get("name").and_then(|name| {
                            live_items.iter().find(|l| l.get("name") == Some(name))
                        });
                        let live = named.or_else(|| live_items.get(index));
                        project(item, live.unwrap_or(&Value::Null))
                    })
                    .collect(),
            )
        }
        _ => live.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(image: &str, run_as_non_root: bool) -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "m", "labels": {"a": "b"}},
            "spec": {"template": {"spec": {
                "containers": [{
                    "name": "sidecar",
                    "image": image,
                    "args": ["serve", "--config", "/etc/c.yaml"],
                    "resources": {"limits": {"cpu": "0.5", "memory": "1Gi"}},
                    "securityContext": {"runAsNonRoot": run_as_non_root, "allowPrivilegeEscalation": false}
                }],
                "volumes": [{"name": "config", "configMap": {"name": "m-sidecar"}}, {"name": "cache", "emptyDir": {}}]
            }}}
        })
    }

    /// What the apiserver returns: defaults filled in, quantities canonical, a status, labels
    /// and containers of others.
    fn served(image: &str, run_as_non_root: bool) -> Value {
        let mut live = deployment(image, run_as_non_root);
        let container = &mut live["spec"]["template"]["spec"]["containers"][0];
        container["resources"]["limits"]["cpu"] = json!("500m");
        container["imagePullPolicy"] = json!("IfNotPresent");
        container["terminationMessagePath"] = json!("/dev/termination-log");
        live["spec"]["template"]["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .insert(0, json!({"name": "injected", "image": "mesh:1"}));
        live["spec"]["template"]["spec"]["volumes"][1] = json!({"name": "cache", "emptyDir": {}});
        live["metadata"]["labels"]["other"] = json!("x");
        live["metadata"]["resourceVersion"] = json!("42");
        live["status"] = json!({"replicas": 1});
        live
    }

    #[test]
    fn a_served_object_holds_what_was_built() {
        assert_eq!(
            first_difference(&deployment("a:1", true), &served("a:1", true)),
            None
        );
    }

    #[test]
    fn a_hand_edited_image_or_security_context_is_drift() {
        let desired = deployment("a:1", true);
        assert_eq!(
            first_difference(&desired, &served("evil:1", true)).as_deref(),
            Some("spec.template.spec.containers[0]")
        );
        assert_eq!(
            first_difference(&desired, &served("a:1", false)).as_deref(),
            Some("spec.template.spec.containers[0]")
        );
        let mut removed = served("a:1", true);
        removed["spec"]["template"]["spec"]["containers"][1]
            .as_object_mut()
            .unwrap()
            .remove("securityContext");
        assert!(first_difference(&desired, &removed).is_some());
    }

    #[test]
    fn scalar_lists_must_be_equal_and_zero_values_may_be_absent() {
        let desired = json!({"spec": {"args": ["a", "b"], "env": [], "flag": false}});
        assert_eq!(
            first_difference(&desired, &json!({"spec": {"args": ["a", "b"]}})),
            None
        );
        assert_eq!(
            first_difference(&desired, &json!({"spec": {"args": ["b", "a"]}})).as_deref(),
            Some("spec.args")
        );
        assert_eq!(
            first_difference(&json!({"spec": {"n": 3}}), &json!({"spec": {}})).as_deref(),
            Some("spec.n")
        );
        assert_eq!(
            first_difference(&json!({"data": {"k": "v"}}), &json!({"data": {"k": "w"}})).as_deref(),
            Some("data.k")
        );
    }

    #[test]
    fn quantities_compare_by_value_only_where_they_are_quantities() {
        assert_eq!(parse_quantity("500m"), Some(0.5));
        assert_eq!(parse_quantity("1Gi"), Some(1073741824.0));
        assert_eq!(parse_quantity("1e9"), Some(1e9));
        assert_eq!(parse_quantity("2"), Some(2.0));
        assert_eq!(parse_quantity("x"), None);
        assert_eq!(
            first_difference(
                &json!({"r": {"requests": {"memory": "1G"}}}),
                &json!({"r": {"requests": {"memory": "1000M"}}})
            ),
            None
        );
        assert!(
            first_difference(&json!({"image": "1.0"}), &json!({"image": "1"})).is_some(),
            "outside resources a string is a string"
        );
    }

    #[test]
    fn projections_are_equal_when_only_unowned_fields_change() {
        let desired = deployment("a:1", true);
        let mut later = served("a:1", true);
        later["status"] = json!({"replicas": 3});
        later["metadata"]["resourceVersion"] = json!("43");
        assert_eq!(
            project(&desired, &served("a:1", true)),
            project(&desired, &later)
        );
        assert_ne!(
            project(&desired, &served("a:1", true)),
            project(&desired, &served("b:1", true))
        );
    }
}
