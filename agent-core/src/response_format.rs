//! Response formats: the shape a model's reply must take (free text, any JSON object, or JSON
//! matching a schema derived from a Rust type), and the names chat-completion APIs accept.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The shape a model's reply must take ([`ChatRequest::response_format`](crate::ChatRequest::response_format)).
///
/// Derive the schema from a Rust type with [`ResponseFormat::json_schema_for`]: a provider that
/// supports structured outputs (OpenAI's `response_format: {type: "json_schema"}`) then constrains
/// the reply to it, in strict mode when the schema allows.
///
/// ```
/// use agent_core::ResponseFormat;
///
/// #[derive(serde::Deserialize, schemars::JsonSchema)]
/// struct Verdict { approved: bool, reason: String }
///
/// let format = ResponseFormat::json_schema_for::<Verdict>();
/// let ResponseFormat::JsonSchema { name, schema, strict, .. } = &format else { unreachable!() };
/// assert_eq!(&**name, "Verdict");
/// assert!(*strict, "every field is required: strict mode applies");
/// assert_eq!(schema["additionalProperties"], false);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ResponseFormat {
    /// Free text (what no format means).
    Text,
    /// Any JSON object (OpenAI's "JSON mode").
    JsonObject,
    /// JSON matching `schema`.
    JsonSchema {
        /// The schema's name (letters, digits, `_` and `-`), shown to the model.
        name: Arc<str>,
        /// What the value is for, shown to the model.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        description: Option<Arc<str>>,
        /// The JSON schema.
        schema: Arc<serde_json::Value>,
        /// Ask the provider to enforce the schema exactly (OpenAI's strict mode). Only schemas
        /// whose objects list every property as required and allow no others qualify.
        #[serde(default)]
        strict: bool,
    },
}

impl ResponseFormat {
    /// The JSON schema of `T` (by schemars), named after the type, in strict mode when the
    /// schema qualifies: every object gets `additionalProperties: false`, and strict is set when
    /// every property of every object is required (an `Option` field that may be left out makes
    /// the schema non-strict, which providers still follow, without the guarantee).
    pub fn json_schema_for<T: schemars::JsonSchema>() -> Self {
        let mut schema = schemars::schema_for!(T);
        // The meta-schema URI means nothing to a model and some providers reject unknown keys.
        schema.remove("$schema");
        let mut value = schema.to_value();
        let strict = close_objects(&mut value);
        ResponseFormat::JsonSchema {
            name: api_name(&T::schema_name()).into(),
            description: None,
            schema: Arc::new(value),
            strict,
        }
    }

    /// The schema, for a `JsonSchema` format.
    pub fn schema(&self) -> Option<&serde_json::Value> {
        match self {
            ResponseFormat::JsonSchema { schema, .. } => Some(schema),
            _ => None,
        }
    }

    /// The schema's name, for a `JsonSchema` format.
    pub fn name(&self) -> Option<&str> {
        match self {
            ResponseFormat::JsonSchema { name, .. } => Some(name),
            _ => None,
        }
    }
}

/// `text` as a name chat-completion APIs accept (`^[a-zA-Z0-9_-]{1,64}$`, OpenAI's rule for
/// speaker names and schema names): other characters become `_`, and it is cut to 64. Empty when
/// `text` is.
///
/// ```
/// assert_eq!(agent_core::model::api_name("Vec<my::Plan>"), "Vec_my__Plan_");
/// ```
pub fn api_name(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect()
}

/// Sets `additionalProperties: false` on every object schema that does not say otherwise, and
/// returns whether every object requires all its properties (what strict mode demands).
fn close_objects(value: &mut serde_json::Value) -> bool {
    let mut strict = true;
    match value {
        serde_json::Value::Object(map) => {
            let is_object =
                map.get("type").is_some_and(|t| t == "object") || map.contains_key("properties");
            if is_object {
                map.entry("additionalProperties")
                    .or_insert(serde_json::Value::Bool(false));
                let properties: Vec<&String> = map
                    .get("properties")
                    .and_then(serde_json::Value::as_object)
                    .map(|p| p.keys().collect())
                    .unwrap_or_default();
                let required = map.get("required").and_then(serde_json::Value::as_array);
                let all_required = properties.iter().all(|p| {
                    required.is_some_and(|r| r.iter().any(|x| x.as_str() == Some(p.as_str())))
                });
                strict &= all_required && map["additionalProperties"] == false;
            }
            for child in map.values_mut() {
                strict &= close_objects(child);
            }
        }
        serde_json::Value::Array(items) => {
            for child in items {
                strict &= close_objects(child);
            }
        }
        _ => {}
    }
    strict
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_schemas_are_closed_and_strict_only_when_every_field_is_required() {
        #[derive(schemars::JsonSchema)]
        #[allow(dead_code)]
        struct Inner {
            a: u8,
        }
        #[derive(schemars::JsonSchema)]
        #[allow(dead_code)]
        struct Outer {
            inner: Inner,
            items: Vec<Inner>,
        }
        #[derive(schemars::JsonSchema)]
        #[allow(dead_code)]
        struct Loose {
            maybe: Option<u8>,
        }
        let outer = ResponseFormat::json_schema_for::<Outer>();
        let ResponseFormat::JsonSchema { schema, strict, .. } = &outer else {
            unreachable!()
        };
        assert!(*strict);
        assert_eq!(schema["additionalProperties"], false);
        assert_eq!(schema["$defs"]["Inner"]["additionalProperties"], false);
        assert!(schema.get("$schema").is_none());
        let loose = ResponseFormat::json_schema_for::<Loose>();
        assert!(matches!(
            loose,
            ResponseFormat::JsonSchema { strict: false, .. }
        ));
        // The format round-trips through serde.
        let json = serde_json::to_string(&outer).unwrap();
        assert_eq!(
            serde_json::from_str::<ResponseFormat>(&json).unwrap(),
            outer
        );
    }
}
