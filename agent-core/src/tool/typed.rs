//! Typed tools: an async closure over a schemars-described argument type.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Tool, ToolError};
use crate::model::ToolSpec;

/// A tool whose arguments are the Rust type `A`: the JSON schema the model sees comes from
/// `schemars`, and the model's argument text is parsed with `serde_json`.
///
/// Arguments that do not parse into `A` (bad JSON, a missing field, a wrong type) become
/// [`ToolError::InvalidArguments`], whose text names the problem and repeats the schema so the
/// model can correct its call. An empty argument text is read as `{}`. The closure returns
/// `Ok(output)` — a `String` is sent as is, anything else `Serialize` as JSON — or `Err(message)`,
/// which the model reads as a tool failure.
///
/// ```
/// use agent_core::tool::{Tool, TypedTool};
///
/// #[derive(serde::Deserialize, schemars::JsonSchema)]
/// struct Add {
///     /// First addend.
///     a: i64,
///     /// Second addend.
///     b: i64,
/// }
///
/// let add = TypedTool::new("add", "Adds two integers.", |args: Add| async move {
///     args.a.checked_add(args.b).ok_or_else(|| "overflow".to_string())
/// });
/// assert_eq!(add.spec().parameters["required"], serde_json::json!(["a", "b"]));
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// assert_eq!(add.call(r#"{"a": 2, "b": 3}"#).await.unwrap(), "5");
/// let err = add.call(r#"{"a": 2}"#).await.unwrap_err().to_string();
/// assert!(err.contains("missing field `b`"), "{err}");
/// # });
/// ```
pub struct TypedTool<A, F> {
    spec: ToolSpec,
    schema_text: Arc<str>,
    run: F,
    _args: PhantomData<fn(A)>,
}

impl<A, F> fmt::Debug for TypedTool<A, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedTool")
            .field("name", &self.spec.name)
            .field("parameters", &self.schema_text)
            .finish_non_exhaustive()
    }
}

impl<A, F, Fut, O> TypedTool<A, F>
where
    A: DeserializeOwned + JsonSchema,
    F: Fn(A) -> Fut + Send + Sync,
    Fut: Future<Output = Result<O, String>> + Send,
    O: Serialize,
{
    /// A tool called `name` (letters, digits, `_` and `-`, at most 64; checked when it is added
    /// to a [`ToolRegistry`](super::ToolRegistry)) that runs `run` on parsed arguments.
    pub fn new(name: impl Into<Arc<str>>, description: impl Into<Arc<str>>, run: F) -> Self {
        let mut schema = schemars::schema_for!(A);
        // The meta-schema URI means nothing to a model and some providers reject unknown keys.
        schema.remove("$schema");
        let parameters = schema.to_value();
        Self {
            schema_text: parameters.to_string().into(),
            spec: ToolSpec {
                name: name.into(),
                description: description.into(),
                parameters: Arc::new(parameters),
            },
            run,
            _args: PhantomData,
        }
    }
}

#[async_trait]
impl<A, F, Fut, O> Tool for TypedTool<A, F>
where
    A: DeserializeOwned + JsonSchema,
    F: Fn(A) -> Fut + Send + Sync,
    Fut: Future<Output = Result<O, String>> + Send,
    O: Serialize,
{
    fn spec(&self) -> ToolSpec {
        self.spec.clone()
    }

    async fn call(&self, arguments: &str) -> Result<String, ToolError> {
        let text = if arguments.trim().is_empty() {
            "{}"
        } else {
            arguments
        };
        let args: A = serde_json::from_str(text).map_err(|e| ToolError::InvalidArguments {
            tool: self.spec.name.to_string(),
            message: e.to_string(),
            schema: self.schema_text.to_string(),
        })?;
        let output = (self.run)(args)
            .await
            .map_err(|message| ToolError::Failed {
                tool: self.spec.name.to_string(),
                message,
            })?;
        match serde_json::to_value(&output) {
            Ok(serde_json::Value::String(s)) => Ok(s),
            Ok(value) => Ok(value.to_string()),
            Err(e) => Err(ToolError::Failed {
                tool: self.spec.name.to_string(),
                message: format!("its output could not be serialized as JSON: {e}"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, schemars::JsonSchema)]
    struct Query {
        text: String,
        #[serde(default)]
        limit: Option<u32>,
    }

    #[derive(Serialize)]
    struct Hit {
        title: String,
    }

    fn search() -> impl Tool {
        TypedTool::new("search", "Searches.", |q: Query| async move {
            if q.text.is_empty() {
                return Err("empty query; pass some text".to_string());
            }
            let hits = (0..q.limit.unwrap_or(1))
                .map(|_| Hit {
                    title: q.text.clone(),
                })
                .collect::<Vec<_>>();
            Ok(hits)
        })
    }

    #[test]
    fn schema_comes_from_schemars_without_the_meta_schema() {
        let spec = search().spec();
        assert_eq!(spec.parameters["type"], "object");
        assert_eq!(spec.parameters["required"], serde_json::json!(["text"]));
        assert!(spec.parameters.get("$schema").is_none());
        assert_eq!(&*spec.description, "Searches.");
    }

    #[tokio::test]
    async fn structured_output_is_json_and_errors_are_readable() {
        let tool = search();
        assert_eq!(
            tool.call(r#"{"text":"rust","limit":2}"#).await.unwrap(),
            r#"[{"title":"rust"},{"title":"rust"}]"#
        );
        let bad_type = tool.call(r#"{"text": 5}"#).await.unwrap_err();
        let ToolError::InvalidArguments {
            tool: name,
            message,
            schema,
        } = &bad_type
        else {
            panic!("{bad_type:?}")
        };
        assert_eq!(name, "search");
        assert!(message.contains("invalid type: integer `5`"), "{message}");
        assert!(schema.contains("\"required\":[\"text\"]"), "{schema}");
        let not_json = tool.call("text=rust").await.unwrap_err().to_string();
        assert!(
            not_json.starts_with("invalid arguments for tool 'search'"),
            "{not_json}"
        );
        let failed = tool.call(r#"{"text":""}"#).await.unwrap_err().to_string();
        assert_eq!(failed, "tool 'search' failed: empty query; pass some text");
        // Empty argument text is `{}`: here, a missing required field.
        let empty = tool.call("  ").await.unwrap_err().to_string();
        assert!(empty.contains("missing field `text`"), "{empty}");
    }
}
