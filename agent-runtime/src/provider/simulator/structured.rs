//! Structured replies of the simulated provider: a request with a response format gets JSON
//! that fits it — a value built from the schema, deterministically (the same request, the same
//! value), so agents that decode typed output can run on the simulator and the mock.
//!
//! Covers what schemars derives: objects (every property filled), arrays (`minItems`, at least
//! one item), strings, integers and numbers (within `minimum`/`maximum`), booleans, `null`,
//! `enum`, `const`, `anyOf`/`oneOf`/`allOf` (the first branch that is not `null`) and `$ref`s into
//! `$defs`/`definitions`.

use agent_core::ResponseFormat;
use serde_json::{Map, Value, json};

const WORDS: [&str; 6] = ["queue", "bucket", "token", "agent", "quota", "reply"];

/// Nesting beyond this gets the simplest value of its type (a recursive schema would not end).
const MAX_DEPTH: u32 = 8;

/// The JSON text answering a request with `format`, or `None` for free text.
pub(super) fn reply_text(format: &ResponseFormat, seed: usize) -> Option<String> {
    let value = match format {
        ResponseFormat::JsonObject => json!({ "answer": WORDS[seed % WORDS.len()] }),
        ResponseFormat::JsonSchema { schema, .. } => value_for(schema, schema, seed, 0),
        _ => return None,
    };
    Some(value.to_string())
}

fn value_for(schema: &Value, root: &Value, seed: usize, depth: u32) -> Value {
    let Some(schema) = schema.as_object() else {
        // `true` or a missing schema: anything goes.
        return Value::String(WORDS[seed % WORDS.len()].to_owned());
    };
    if let Some(target) = schema.get("$ref").and_then(Value::as_str) {
        let pointer = target.trim_start_matches('#');
        return match root.pointer(pointer) {
            Some(resolved) if depth < MAX_DEPTH => value_for(resolved, root, seed, depth + 1),
            _ => Value::Null,
        };
    }
    if let Some(value) = schema.get("const") {
        return value.clone();
    }
    if let Some(first) = schema
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return first.clone();
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(branches) = schema.get(key).and_then(Value::as_array) {
            let branch = branches
                .iter()
                .find(|b| b.get("type").and_then(Value::as_str) != Some("null"))
                .or(branches.first());
            if let Some(branch) = branch {
                return value_for(branch, root, seed, depth + 1);
            }
        }
    }
    let kind = match schema.get("type") {
        Some(Value::String(kind)) => kind.as_str(),
        // `["string", "null"]`: the first type that is not null.
        Some(Value::Array(kinds)) => kinds
            .iter()
            .filter_map(Value::as_str)
            .find(|k| *k != "null")
            .unwrap_or("null"),
        _ if schema.contains_key("properties") => "object",
        _ if schema.contains_key("items") => "array",
        _ => "string",
    };
    match kind {
        "object" => {
            let mut out = Map::new();
            if depth < MAX_DEPTH
                && let Some(properties) = schema.get("properties").and_then(Value::as_object)
            {
                for (i, (name, property)) in properties.iter().enumerate() {
                    out.insert(name.clone(), value_for(property, root, seed + i, depth + 1));
                }
            }
            Value::Object(out)
        }
        "array" => {
            let count = schema
                .get("minItems")
                .and_then(Value::as_u64)
                .unwrap_or(1)
                .max(1);
            let max = schema.get("maxItems").and_then(Value::as_u64);
            let count = max.map_or(count, |m| count.min(m));
            match schema.get("items") {
                Some(items) if depth < MAX_DEPTH => (0..count)
                    .map(|i| value_for(items, root, seed + i as usize, depth + 1))
                    .collect(),
                _ => Value::Array(Vec::new()),
            }
        }
        "integer" => {
            let min = schema.get("minimum").and_then(Value::as_i64).unwrap_or(0);
            let max = schema
                .get("maximum")
                .and_then(Value::as_i64)
                .unwrap_or(i64::MAX);
            let n = i64::try_from(seed % 100).unwrap_or(0).saturating_add(min);
            json!(n.min(max))
        }
        "number" => {
            let min = schema.get("minimum").and_then(Value::as_f64).unwrap_or(0.0);
            let max = schema
                .get("maximum")
                .and_then(Value::as_f64)
                .unwrap_or(f64::MAX);
            json!((min + (seed % 100) as f64 / 2.0).min(max))
        }
        "boolean" => Value::Bool(seed.is_multiple_of(2)),
        "null" => Value::Null,
        _ => {
            let mut text = WORDS[seed % WORDS.len()].to_owned();
            let min = schema.get("minLength").and_then(Value::as_u64).unwrap_or(0) as usize;
            while text.chars().count() < min {
                text.push('x');
            }
            Value::String(text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
    #[allow(dead_code)]
    enum Mood {
        Calm,
        Busy,
    }

    #[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
    #[allow(dead_code)]
    struct Step {
        title: String,
        minutes: u32,
        optional: Option<bool>,
    }

    #[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
    #[allow(dead_code)]
    struct Plan {
        steps: Vec<Step>,
        mood: Mood,
        score: f64,
        tags: Vec<String>,
        lead: Option<Step>,
    }

    #[test]
    fn replies_decode_as_the_type_the_schema_came_from() {
        let format = ResponseFormat::json_schema_for::<Plan>();
        for seed in 0..5 {
            let text = reply_text(&format, seed).unwrap();
            let plan: Result<Plan, _> = serde_json::from_str(&text);
            assert!(plan.is_ok(), "{text}: {plan:?}");
        }
        assert_eq!(reply_text(&format, 3), reply_text(&format, 3));
        let object = reply_text(&ResponseFormat::JsonObject, 0).unwrap();
        assert!(serde_json::from_str::<Value>(&object).unwrap().is_object());
        assert_eq!(reply_text(&ResponseFormat::Text, 0), None);
    }
}
