//! Structured output for [`LlmAgent`](super::LlmAgent): the response format it asks for, how a
//! reply is checked against it, and what the model is told when a reply does not fit.

use std::fmt;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;

use super::LlmAgent;
use crate::agent::{Agent, AgentError, AgentReply, TurnContext};
use crate::message::{Content, Message};
use crate::model::ResponseFormat;

/// Corrections an [`LlmAgent`](super::LlmAgent) asks for, by default, when a reply does not fit
/// its response format (each one is another model call, charged to the budget).
pub const DEFAULT_MAX_FORMAT_RETRIES: u32 = 2;

type Check = dyn Fn(&serde_json::Value) -> Result<(), String> + Send + Sync;

/// What an agent's final reply must be, and how to check it.
#[derive(Clone)]
pub(crate) struct OutputSpec {
    pub(crate) format: ResponseFormat,
    /// `None`: any JSON of the right kind. The check of a typed output is serde's own decoding
    /// into the type the schema was derived from — it fails on exactly the values the type
    /// cannot hold, so no separate JSON-schema validator (and its dependency tree) is needed.
    check: Option<Arc<Check>>,
    pub(crate) max_retries: u32,
}

impl fmt::Debug for OutputSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutputSpec")
            .field("format", &self.format.name())
            .field("max_retries", &self.max_retries)
            .finish_non_exhaustive()
    }
}

impl OutputSpec {
    /// The JSON schema of `T`, checked by decoding into `T`.
    pub(crate) fn typed<T: DeserializeOwned + JsonSchema>() -> Self {
        Self {
            format: ResponseFormat::json_schema_for::<T>(),
            check: Some(Arc::new(|value| {
                T::deserialize(value).map(drop).map_err(|e| e.to_string())
            })),
            max_retries: DEFAULT_MAX_FORMAT_RETRIES,
        }
    }

    /// A format given as is: replies must be JSON (an object for `JsonObject`).
    pub(crate) fn format(format: ResponseFormat) -> Self {
        Self {
            format,
            check: None,
            max_retries: DEFAULT_MAX_FORMAT_RETRIES,
        }
    }

    fn schema_name(&self) -> &str {
        self.format.name().unwrap_or("json")
    }

    /// The structured content of a reply that fits, or what is wrong with it.
    pub(crate) fn conform(&self, message: &Message) -> Result<Option<Content>, String> {
        if matches!(self.format, ResponseFormat::Text) {
            return Ok(None);
        }
        let text = match &message.content {
            Content::Text { text } => text,
            Content::Structured { .. } => return Ok(None),
            _ => return Err("the reply is not a text holding a JSON value".to_owned()),
        };
        let value: serde_json::Value = serde_json::from_str(text.trim())
            .map_err(|e| format!("the reply is not valid JSON ({e})"))?;
        if matches!(self.format, ResponseFormat::JsonObject) && !value.is_object() {
            return Err("the reply is JSON but not an object".to_owned());
        }
        if let Some(check) = &self.check {
            check(&value).map_err(|e| format!("the value does not match the schema: {e}"))?;
        }
        Ok(Some(Content::Structured {
            schema: self.schema_name().into(),
            text: text.trim().into(),
            value: Arc::new(value),
        }))
    }

    /// The message that sends a reply's problem back to the model.
    pub(crate) fn correction(&self, problem: &str) -> Message {
        let schema = self
            .format
            .schema()
            .map(|s| format!(" The schema: {s}"))
            .unwrap_or_default();
        Message::user(format!(
            "Your last reply cannot be used: {problem}. Reply again with only a JSON value \
             matching the response format '{}', and nothing else.{schema}",
            self.schema_name()
        ))
    }

    /// The error when the corrections ran out.
    pub(crate) fn exhausted(&self, attempts: u32, last: String) -> StructuredOutputError {
        StructuredOutputError {
            schema: self.schema_name().to_owned(),
            attempts,
            last,
        }
    }
}

impl LlmAgent {
    /// A final reply made to fit the response format: sent back with its problem until it fits
    /// or the corrections run out. A reply with no format passes as is.
    pub(super) async fn conformed(
        &self,
        ctx: &dyn TurnContext,
        messages: &mut Vec<Message>,
        mut message: Message,
    ) -> Result<Message, AgentError> {
        let Some(spec) = &self.output else {
            return Ok(message);
        };
        let mut attempts = 1;
        loop {
            match spec.conform(&message) {
                Ok(content) => {
                    if let Some(content) = content {
                        message.content = content;
                    }
                    return Ok(message);
                }
                Err(problem) if attempts > spec.max_retries => {
                    return Err(AgentError::failed(
                        format!("agent '{}'", self.name),
                        spec.exhausted(attempts, problem),
                    ));
                }
                Err(problem) => {
                    tracing::debug!(agent = %self.name, attempts, %problem, "reply sent back for correction");
                    messages.push(message);
                    messages.push(spec.correction(&problem));
                    message = self.call(ctx, messages).await?;
                    attempts += 1;
                }
            }
        }
    }

    /// [`reply`](Agent::reply), with the final message decoded as `T` (the agent is normally
    /// built with [`output::<T>()`](crate::agents::LlmAgentBuilder::output)).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use agent_core::{testing::TestContext, LlmAgent, Message, ScriptedModel, TurnContext};
    ///
    /// #[derive(Debug, PartialEq, serde::Deserialize, schemars::JsonSchema)]
    /// struct Verdict { approved: bool, reason: String }
    ///
    /// let model = ScriptedModel::new("test/model")
    ///     .text("looks fine to me")                           // not JSON: sent back
    ///     .text(r#"{"approved": true, "reason": "tests pass"}"#);
    /// let reviewer = LlmAgent::builder("reviewer", Arc::new(model.clone()))
    ///     .output::<Verdict>()
    ///     .build()
    ///     .unwrap();
    /// let ctx = TestContext::new();
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let typed = reviewer.reply_as::<Verdict>(&[Message::user("review #42")], &ctx).await.unwrap();
    /// assert_eq!(typed.value, Verdict { approved: true, reason: "tests pass".into() });
    /// // Both calls went through the context and were charged.
    /// assert_eq!(ctx.budget().used().calls, 2);
    /// assert!(model.requests()[0].response_format.is_some());
    /// # });
    /// ```
    pub async fn reply_as<T: serde::de::DeserializeOwned>(
        &self,
        history: &[Message],
        ctx: &dyn TurnContext,
    ) -> Result<TypedReply<T>, AgentError> {
        let reply = self.reply(history, ctx).await?;
        let last = reply
            .last()
            .ok_or_else(|| AgentError::Other(format!("agent '{}' said nothing", self.name)))?;
        let decoded = match last.value_as::<T>() {
            Some(decoded) => decoded,
            // A text reply from an agent without a format: decode its text.
            None => serde_json::from_str(last.text().unwrap_or_default()),
        };
        let value = decoded.map_err(|e| {
            AgentError::failed(
                format!(
                    "agent '{}': the final message does not decode as the requested type",
                    self.name
                ),
                e,
            )
        })?;
        Ok(TypedReply { value, reply })
    }
}

/// The model kept answering with something that does not fit the agent's response format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the model's reply did not match the response format '{schema}' after {attempts} attempts \
     (last problem: {last}); raise max_format_retries, simplify the schema or use a stronger model"
)]
#[non_exhaustive]
pub struct StructuredOutputError {
    /// The response format's name.
    pub schema: String,
    /// Model calls made for the reply.
    pub attempts: u32,
    /// What was wrong with the last reply.
    pub last: String,
}

/// An agent's reply decoded as a typed value (see
/// [`LlmAgent::reply_as`](super::LlmAgent::reply_as)).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct TypedReply<T> {
    /// The value of the final message.
    pub value: T,
    /// The whole reply (its last message is [`Content::Structured`]).
    pub reply: AgentReply,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
    #[allow(dead_code)]
    struct Point {
        x: i32,
        y: i32,
    }

    #[test]
    fn a_reply_fits_or_says_why_not() {
        let spec = OutputSpec::typed::<Point>();
        let fits = spec
            .conform(&Message::assistant("a", r#" {"x": 1, "y": 2} "#))
            .unwrap()
            .unwrap();
        assert!(
            matches!(&fits, Content::Structured { schema, value, .. } if &**schema == "Point" && value["y"] == 2)
        );
        let bad_json = spec.conform(&Message::assistant("a", "x=1")).unwrap_err();
        assert!(
            bad_json.starts_with("the reply is not valid JSON"),
            "{bad_json}"
        );
        let wrong = spec
            .conform(&Message::assistant("a", r#"{"x": 1}"#))
            .unwrap_err();
        assert!(wrong.contains("missing field `y`"), "{wrong}");
        let object = OutputSpec::format(ResponseFormat::JsonObject);
        assert!(object.conform(&Message::assistant("a", "[1]")).is_err());
        assert!(object.conform(&Message::assistant("a", "{}")).is_ok());
        let correction = spec.correction(&wrong);
        assert!(correction.text().unwrap().contains("'Point'"));
        assert!(correction.text().unwrap().contains(r#""required""#));
    }
}
