//! The cluster manifests in deploy/ parse, have the kinds and API versions
//! a cluster expects, and agree with prewarm's defaults (taint keys,
//! condition type, annotation).

use prewarm::config::{CONDITION_TAINT_KEY, CONDITION_TYPE, DIRECT_TAINT_KEY};
use serde::Deserialize;
use serde_yaml::Value;
use std::path::Path;

fn docs(file: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{file}: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    path.iter()
        .try_fold(v, |v, k| v.get(*k))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn kinds(docs: &[Value]) -> Vec<(String, String)> {
    docs.iter()
        .map(|d| {
            (
                s(d, &["apiVersion"]).to_string(),
                s(d, &["kind"]).to_string(),
            )
        })
        .collect()
}

#[test]
fn every_manifest_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".yaml") {
            for d in docs(&name) {
                assert!(
                    !s(&d, &["apiVersion"]).is_empty() && !s(&d, &["kind"]).is_empty(),
                    "{name}"
                );
                assert!(!s(&d, &["metadata", "name"]).is_empty(), "{name}");
                n += 1;
            }
        }
    }
    assert!(n >= 7, "{n} objects");
}

#[test]
fn rbac_grants_get_and_patch_on_nodes_and_creating_events_only() {
    let d = docs("rbac.yaml");
    assert_eq!(
        kinds(&d),
        [
            ("v1", "Namespace"),
            ("v1", "ServiceAccount"),
            ("rbac.authorization.k8s.io/v1", "ClusterRole"),
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
        ]
        .map(|(a, k)| (a.to_string(), k.to_string()))
    );
    let rules = d[2]["rules"].as_sequence().unwrap();
    assert_eq!(rules.len(), 2);
    let strs = |v: &Value| -> Vec<String> {
        v.as_sequence()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(strs(&rules[0]["resources"]), ["nodes"], "not nodes/status");
    assert_eq!(strs(&rules[0]["verbs"]), ["get", "patch"]);
    assert_eq!(strs(&rules[1]["apiGroups"]), ["events.k8s.io"]);
    assert_eq!(strs(&rules[1]["resources"]), ["events"]);
    assert_eq!(strs(&rules[1]["verbs"]), ["create"]);
    let subject = &d[3]["subjects"][0];
    assert_eq!(s(subject, &["name"]), s(&d[1], &["metadata", "name"]));
    assert_eq!(
        s(subject, &["namespace"]),
        s(&d[1], &["metadata", "namespace"])
    );
}

#[test]
fn the_admission_policy_pins_the_principal_and_the_taint() {
    let d = docs("admission-policy.yaml");
    assert_eq!(
        kinds(&d),
        [
            (
                "admissionregistration.k8s.io/v1",
                "ValidatingAdmissionPolicy"
            ),
            (
                "admissionregistration.k8s.io/v1",
                "ValidatingAdmissionPolicyBinding"
            ),
        ]
        .map(|(a, k)| (a.to_string(), k.to_string()))
    );
    let spec = &d[0]["spec"];
    let cel: String = serde_yaml::to_string(spec).unwrap();
    assert!(
        cel.contains(&format!("'{DIRECT_TAINT_KEY}'")),
        "the CEL names the taint key"
    );
    for a in testbed::kubeapi::PREWARM_ANNOTATIONS {
        assert!(cel.contains(&format!("'{a}'")), "and the annotation {a}");
    }
    assert!(cel.contains("system:serviceaccount:prewarm-system:prewarm-untaint"));
    assert!(cel.contains("oldObject") && cel.contains("filter(t, t.key != variables.taintKey)"));
    for v in spec["validations"].as_sequence().unwrap() {
        assert_eq!(
            s(v, &["reason"]),
            "Forbidden",
            "a denial must not look like a JSON-patch 422"
        );
    }
    assert_eq!(
        s(&d[1], &["spec", "policyName"]),
        s(&d[0], &["metadata", "name"])
    );
    assert_eq!(d[1]["spec"]["validationActions"][0].as_str(), Some("Deny"));
}

#[test]
fn the_readiness_rule_matches_condition_mode_defaults() {
    let d = docs("node-readiness-rule.yaml");
    assert_eq!(
        kinds(&d),
        [(
            "readiness.node.x-k8s.io/v1alpha1".to_string(),
            "NodeReadinessRule".to_string()
        )]
    );
    let spec = &d[0]["spec"];
    assert_eq!(s(spec, &["enforcementMode"]), "bootstrap-only");
    assert_eq!(s(spec, &["taint", "key"]), CONDITION_TAINT_KEY);
    assert_eq!(s(spec, &["taint", "effect"]), "NoSchedule");
    assert_eq!(s(&spec["conditions"][0], &["type"]), CONDITION_TYPE);
    assert_eq!(s(&spec["conditions"][0], &["requiredStatus"]), "True");
    assert!(spec.get("nodeSelector").is_some(), "required by the CRD");
}
