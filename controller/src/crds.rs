//! The CustomResourceDefinitions of the Istio kinds the controller serves, generated from the
//! model types it parses them into (`schemars`), for the Helm chart
//! (`charts/ambit/files/crds.yaml`, regenerated with `cargo run -p ambit-controller --bin
//! ambit-crds`; a test fails when the chart's copy drifts).
//!
//! Names, groups, versions, short names and categories are Istio's, so the definitions can
//! replace Istio's own (and Ambit's own kind, RateLimitPolicy in `policy.ambit.dev`, is
//! generated the same way). Each `spec` schema lists the fields Ambit reads with their types, and
//! every object in it keeps unknown fields (`x-kubernetes-preserve-unknown-fields`): an Istio
//! manifest using a field Ambit does not implement is stored as written instead of being
//! silently pruned. `status` is a subresource the controller writes.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionNames, CustomResourceDefinitionSpec,
    CustomResourceDefinitionVersion, CustomResourceSubresourceStatus, CustomResourceSubresources,
    CustomResourceValidation, JSONSchemaProps,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use schemars::generate::SchemaSettings;
use schemars::JsonSchema;
use serde_json::{json, Map, Value};

use crate::model;
use crate::source::kube::WATCHED;

/// One served kind.
struct Definition {
    group: &'static str,
    kind: &'static str,
    plural: &'static str,
    short: &'static str,
    versions: &'static [&'static str],
    spec: Value,
}

fn spec_schema<T: JsonSchema>() -> Value {
    let settings = SchemaSettings::openapi3().with(|s| s.inline_subschemas = true);
    let schema = settings.into_generator().into_root_schema_for::<T>();
    let mut value = schema.to_value();
    structural(&mut value);
    value
}

/// Rewrites a schemars schema into a Kubernetes structural schema: no `$schema`, titles or
/// defaults, `nullable` dropped (absent is how Kubernetes says null), and free-form values
/// (`serde_json::Value`) as objects that keep their fields.
fn structural(value: &mut Value) {
    let Some(obj) = value.as_object_mut() else { return };
    for key in ["$schema", "title", "default", "nullable", "definitions", "$defs", "components"] {
        obj.remove(key);
    }
    if obj.is_empty() {
        obj.insert("type".into(), json!("object"));
        obj.insert("x-kubernetes-preserve-unknown-fields".into(), Value::Bool(true));
        return;
    }
    if let Some(Value::Object(props)) = obj.get_mut("properties") {
        for v in props.values_mut() {
            structural(v);
        }
        // Istio fields Ambit does not read, at any depth, are stored as written.
        obj.insert("x-kubernetes-preserve-unknown-fields".into(), Value::Bool(true));
    }
    for key in ["items", "additionalProperties"] {
        if let Some(v) = obj.get_mut(key) {
            structural(v);
        }
    }
}

/// The served kinds, their group and plural taken from the watched kinds (one table).
fn definitions() -> Vec<Definition> {
    const SECURITY: &[&str] = &["v1", "v1beta1"];
    const NETWORKING: &[&str] = &["v1", "v1beta1", "v1alpha3"];
    [
        ("AuthorizationPolicy", "ap", spec_schema::<model::AuthorizationPolicySpec>()),
        ("PeerAuthentication", "pa", spec_schema::<model::PeerAuthenticationSpec>()),
        ("RequestAuthentication", "ra", spec_schema::<model::RequestAuthenticationSpec>()),
        ("DestinationRule", "dr", spec_schema::<model::DestinationRuleSpec>()),
        ("ServiceEntry", "se", spec_schema::<model::ServiceEntrySpec>()),
        ("VirtualService", "vs", spec_schema::<model::VirtualServiceSpec>()),
        ("Sidecar", "", spec_schema::<model::SidecarSpec>()),
        ("RateLimitPolicy", "rlp", spec_schema::<model::RateLimitPolicySpec>()),
    ]
    .into_iter()
    .filter_map(|(kind, short, spec)| {
        let &(group, _, kind, plural) = WATCHED.iter().find(|w| w.2 == kind)?;
        let versions = match group {
            "security.istio.io" => SECURITY,
            model::RATE_LIMIT_GROUP => &["v1alpha1"],
            _ => NETWORKING,
        };
        Some(Definition { group, kind, plural, short, versions, spec })
    })
    .collect()
}

/// The `spec` schema Ambit reads for a served Istio kind (as in the CRDs above), built once.
fn served_spec_schema(kind: &str) -> Option<&'static Value> {
    static SCHEMAS: std::sync::OnceLock<Vec<(&'static str, Value)>> = std::sync::OnceLock::new();
    SCHEMAS
        .get_or_init(|| definitions().into_iter().map(|d| (d.kind, d.spec)).collect())
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, v)| v)
}

/// The first field of an Istio kind's `spec` that Ambit does not read (`spec.rules[0].rule`),
/// except values that mean what Ambit does anyway (`strip_defaults`),
/// so a manifest using a field Ambit does not implement — or misspelling one it does — is
/// refused naming it instead of applied without it (a DENY policy whose `rules` is misspelt
/// would otherwise deny nothing). `None` for kinds without a served schema, and for free-form
/// values (`provider`).
pub fn unread_field(kind: &str, spec: &Value) -> Option<String> {
    let schema = served_spec_schema(kind)?;
    let mut spec = spec.clone();
    strip_defaults(kind, &mut spec);
    first_unread(schema, &spec, "spec")
}

/// Removes what Istio users commonly write that means what Ambit does anyway, so it is not
/// refused: `exportTo` of `["*"]` or `[]`; a VirtualService's `gateways` of `[mesh]` or `[]`
/// and its matches' `name`s (labels for stats); a DestinationRule's `trafficPolicy.tls` of
/// `ISTIO_MUTUAL` (mesh traffic is mutual TLS already).
fn strip_defaults(kind: &str, spec: &mut Value) {
    let Some(fields) = spec.as_object_mut() else { return };
    let everywhere = |v: &Value| *v == json!(["*"]) || *v == json!([]);
    if fields.get("exportTo").is_some_and(everywhere) {
        fields.remove("exportTo");
    }
    match kind {
        "VirtualService" => {
            if fields.get("gateways").is_some_and(|v| *v == json!(["mesh"]) || *v == json!([])) {
                fields.remove("gateways");
            }
            for route in fields.get_mut("http").and_then(Value::as_array_mut).into_iter().flatten() {
                for m in route.get_mut("match").and_then(Value::as_array_mut).into_iter().flatten() {
                    if let Some(m) = m.as_object_mut().filter(|m| m.get("name").is_some_and(Value::is_string)) {
                        m.remove("name");
                    }
                }
            }
        }
        "DestinationRule" => {
            if let Some(policy) = fields.get_mut("trafficPolicy").and_then(Value::as_object_mut) {
                if policy.get("tls").is_some_and(|t| *t == json!({"mode": "ISTIO_MUTUAL"})) {
                    policy.remove("tls");
                }
            }
        }
        _ => {}
    }
}

fn first_unread(schema: &Value, value: &Value, at: &str) -> Option<String> {
    match value {
        Value::Object(fields) => {
            if let Some(Value::Object(props)) = schema.get("properties") {
                for (key, v) in fields {
                    let path = format!("{at}.{key}");
                    let Some(sub) = props.get(key) else { return Some(path) };
                    if let Some(found) = first_unread(sub, v, &path) {
                        return Some(found);
                    }
                }
                None
            } else if let Some(values) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                fields.iter().find_map(|(key, v)| first_unread(values, v, &format!("{at}.{key}")))
            } else {
                // A free-form value: anything goes.
                None
            }
        }
        Value::Array(items) => {
            let item = schema.get("items")?;
            items.iter().enumerate().find_map(|(i, v)| first_unread(item, v, &format!("{at}[{i}]")))
        }
        _ => None,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    #[error("the generated schema of {0} is not a JSONSchemaProps: {1}")]
    Schema(&'static str, serde_json::Error),
    #[error("encoding the definitions as YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
}

/// The definitions, in the order above.
pub fn custom_resource_definitions() -> Result<Vec<CustomResourceDefinition>, CrdError> {
    definitions()
        .into_iter()
        .map(|d| {
            let mut properties = Map::new();
            properties.insert("spec".into(), d.spec);
            properties.insert("status".into(), json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}));
            let schema: JSONSchemaProps = serde_json::from_value(json!({"type": "object", "properties": properties}))
                .map_err(|e| CrdError::Schema(d.kind, e))?;
            let category = d.group.replace('.', "-");
            let versions = d
                .versions
                .iter()
                .enumerate()
                .map(|(i, name)| CustomResourceDefinitionVersion {
                    name: (*name).into(),
                    served: true,
                    storage: i == 0,
                    schema: Some(CustomResourceValidation { open_api_v3_schema: Some(schema.clone()) }),
                    subresources: Some(CustomResourceSubresources {
                        status: Some(CustomResourceSubresourceStatus(json!({}))),
                        scale: None,
                    }),
                    ..Default::default()
                })
                .collect();
            Ok(CustomResourceDefinition {
                metadata: ObjectMeta {
                    name: Some(format!("{}.{}", d.plural, d.group)),
                    labels: Some([("app.kubernetes.io/part-of".to_owned(), "ambit".to_owned())].into()),
                    // Deleting a definition deletes every object of its kind: uninstalling
                    // the chart leaves them (and the users' policies) in place.
                    annotations: Some([("helm.sh/resource-policy".to_owned(), "keep".to_owned())].into()),
                    ..Default::default()
                },
                spec: CustomResourceDefinitionSpec {
                    group: d.group.into(),
                    names: CustomResourceDefinitionNames {
                        kind: d.kind.into(),
                        list_kind: Some(format!("{}List", d.kind)),
                        plural: d.plural.into(),
                        singular: Some(d.kind.to_lowercase()),
                        short_names: (!d.short.is_empty()).then(|| vec![d.short.into()]),
                        // Ambit's own kinds are in Ambit's category only.
                        categories: Some(if d.group == model::RATE_LIMIT_GROUP {
                            vec!["ambit-dev".into()]
                        } else {
                            vec!["istio-io".into(), category]
                        }),
                    },
                    scope: "Namespaced".into(),
                    versions,
                    ..Default::default()
                },
                status: None,
            })
        })
        .collect()
}

/// The chart's `files/crds.yaml`: every definition as one YAML document.
pub fn render() -> Result<String, CrdError> {
    let mut out = String::from(
        "# Generated by `cargo run -p ambit-controller --bin ambit-crds` from the controller's model\n\
         # types; do not edit (a test compares this file with the generated one).\n",
    );
    for crd in custom_resource_definitions()? {
        let mut value = serde_json::to_value(&crd).map_err(|e| CrdError::Schema("CustomResourceDefinition", e))?;
        if let Some(obj) = value.as_object_mut() {
            // apiVersion/kind first, as people write them.
            let mut ordered = Map::new();
            ordered.insert("apiVersion".into(), json!("apiextensions.k8s.io/v1"));
            ordered.insert("kind".into(), json!("CustomResourceDefinition"));
            ordered.extend(std::mem::take(obj));
            value = Value::Object(ordered);
        }
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&value)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kubernetes' structural-schema rules: every node typed (or keeping unknown fields), no
    /// `$ref`, no `anyOf`/`oneOf`/`allOf`, no `nullable`.
    fn assert_structural(path: &str, v: &Value) {
        let obj = v.as_object().unwrap_or_else(|| panic!("{path}: not an object"));
        for banned in ["$ref", "anyOf", "oneOf", "allOf", "nullable", "default"] {
            assert!(!obj.contains_key(banned), "{path}: has {banned}");
        }
        let preserve = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
        assert!(obj.contains_key("type") || preserve, "{path}: no type");
        if let Some(Value::Object(props)) = obj.get("properties") {
            for (k, p) in props {
                assert_structural(&format!("{path}.{k}"), p);
            }
        }
        for key in ["items", "additionalProperties"] {
            if let Some(p) = obj.get(key) {
                assert_structural(&format!("{path}.{key}"), p);
            }
        }
    }

    #[test]
    fn definitions_are_structural_and_carry_the_model_fields() {
        let crds = custom_resource_definitions().unwrap();
        assert_eq!(crds.len(), 8);
        for crd in &crds {
            let name = crd.metadata.name.clone().unwrap();
            assert_eq!(crd.spec.versions.iter().filter(|v| v.storage).count(), 1, "{name}: one storage version");
            for v in &crd.spec.versions {
                let schema = v.schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref()).unwrap();
                assert_structural(&name, &serde_json::to_value(schema).unwrap());
            }
        }
        let ap = serde_json::to_value(&crds[0].spec.versions[0].schema).unwrap();
        let spec = &ap["openAPIV3Schema"]["properties"]["spec"];
        let source = &spec["properties"]["rules"]["items"]["properties"]["from"]["items"]["properties"]["source"];
        assert_eq!(source["properties"]["remoteIpBlocks"]["items"]["type"], "string");
        assert_eq!(spec["properties"]["provider"]["x-kubernetes-preserve-unknown-fields"], true);
        assert_eq!(spec["x-kubernetes-preserve-unknown-fields"], true, "unimplemented Istio fields kept, not pruned");
        assert_eq!(source["x-kubernetes-preserve-unknown-fields"], true, "at every depth");
        let dr = serde_json::to_value(&crds[3].spec.versions[0].schema).unwrap();
        let pool = &dr["openAPIV3Schema"]["properties"]["spec"]["properties"]["trafficPolicy"]["properties"]
            ["connectionPool"]["properties"]["http"]["properties"];
        assert_eq!(pool["http2MaxRequests"]["type"], "integer");
        // Ambit's own kind: its group and category, the rule's fields typed.
        let rlp = crds.iter().find(|c| c.spec.names.kind == "RateLimitPolicy").unwrap();
        assert_eq!(rlp.spec.group, "policy.ambit.dev");
        assert_eq!(rlp.spec.names.categories.as_deref(), Some(&["ambit-dev".to_owned()][..]));
        assert_eq!(rlp.spec.versions.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(), ["v1alpha1"]);
        let rule = serde_json::to_value(&rlp.spec.versions[0].schema).unwrap()["openAPIV3Schema"]["properties"]["spec"]
            ["properties"]["rules"]["items"]
            .clone();
        assert_eq!(rule["properties"]["requests"]["type"], "integer");
        assert_eq!(rule["properties"]["match"]["items"]["properties"]["paths"]["type"], "array");
    }

    #[test]
    fn rendered_documents_read_back_as_the_definitions() {
        let text = render().unwrap();
        let crds = custom_resource_definitions().unwrap();
        let docs: Vec<CustomResourceDefinition> =
            serde_yaml::Deserializer::from_str(&text).map(|d| serde::Deserialize::deserialize(d).unwrap()).collect();
        assert_eq!(docs, crds);
        assert!(text.contains("subresources:\n      status: {}"), "the status subresource enabled");
    }
}
