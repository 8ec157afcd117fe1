//! A console view of a chat run: who speaks, what they say, the tool calls, the quota waits, why
//! the run stopped, and what it cost.
//!
//! [`ConsolePrinter`] renders [`ChatEvent`]s as plain text lines, one event at a time, to any
//! [`io::Write`]. [`ConsolePrinter::run`] runs a chat and prints its events as they happen — what
//! the examples use:
//!
//! ```
//! use std::sync::Arc;
//!
//! use agent_runtime::{LlmAgent, ScriptedModel};
//! use agent_runtime::chat::GroupChat;
//! use agent_runtime::console::ConsolePrinter;
//! use agent_runtime::QuotaScheduler;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let model = Arc::new(ScriptedModel::new("test/m").text("Hello!"));
//! let agent = LlmAgent::builder("greeter", model).build()?;
//! let mut chat = GroupChat::builder()
//!     .participant(agent)
//!     .max_turns(1)
//!     .scheduler(QuotaScheduler::new())
//!     .build()?;
//!
//! let mut out = Vec::new();
//! let result = ConsolePrinter::new(&mut out).run(&mut chat, "Say hello.").await?;
//! let text = String::from_utf8(out)?;
//! assert!(text.contains("greeter: Hello!"));
//! assert!(text.contains("stopped:"));
//! assert_eq!(result.model_calls(), 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! Writing is best effort: a closed or failing writer never stops the chat.

use std::fmt;
use std::io::{self, Write};
use std::sync::Arc;
use std::time::Duration;

use agent_core::budget::nanos_to_usd;
use agent_core::{Content, Message};
use tokio::sync::mpsc::unbounded_channel;

use crate::chat::{ChatError, ChatEvent, ChatResult, GroupChat, Task};

/// Admission waits shorter than this are not printed: every call "waits" a few microseconds.
const DEFAULT_MIN_WAIT: Duration = Duration::from_millis(1);

/// Prints a chat's events as text, one or a few lines per event.
///
/// Lines, by event:
///
/// | event | line |
/// |---|---|
/// | a message | `writer: text` (tool calls `writer -> tool name(args)`, results `tool name -> text`) |
/// | token deltas (a streaming agent) | `writer: ` then the text as it arrives, on one line; the reply's message is not printed again |
/// | speaker selected | `-- writer` |
/// | call admitted after a wait | `   [quota] writer waited 1.20 s on openai/gpt-4o-mini` |
/// | call finished | `   [call] writer openai/gpt-4o-mini: 120 + 45 tokens, $0.000045, 1 attempt` |
/// | stopped | `stopped: <reason>` |
/// | finished | `usage: 3 calls, 360 + 135 tokens, $0.000135, in 1.52 s` (or the error) |
///
/// Quota waits and per-call lines can be turned off with [`calls`](Self::calls).
#[must_use]
pub struct ConsolePrinter<W = io::Stdout> {
    out: W,
    calls: bool,
    min_wait: Duration,
    /// The agent whose streamed text is on the open line, if one is.
    line: Option<Arc<str>>,
    /// The text streamed by an agent whose message has not arrived yet: that message is already
    /// on screen.
    streamed: Option<(Arc<str>, String)>,
}

impl<W> fmt::Debug for ConsolePrinter<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsolePrinter")
            .field("calls", &self.calls)
            .field("min_wait", &self.min_wait)
            .finish_non_exhaustive()
    }
}

impl ConsolePrinter<io::Stdout> {
    /// A printer to standard output.
    pub fn stdout() -> Self {
        Self::new(io::stdout())
    }
}

impl<W: Write> ConsolePrinter<W> {
    /// A printer to `out`.
    pub fn new(out: W) -> Self {
        Self {
            out,
            calls: true,
            min_wait: DEFAULT_MIN_WAIT,
            line: None,
            streamed: None,
        }
    }

    /// Whether to print model-call lines (quota waits and each finished call). Default: yes.
    pub fn calls(mut self, on: bool) -> Self {
        self.calls = on;
        self
    }

    /// The shortest quota wait worth a line (default 1 ms).
    pub fn min_wait(mut self, min_wait: Duration) -> Self {
        self.min_wait = min_wait;
        self
    }

    /// The writer, back.
    pub fn into_inner(self) -> W {
        self.out
    }

    /// Runs `chat` on `task`, printing each event as it happens, and returns what
    /// [`GroupChat::run`] returns.
    ///
    /// # Errors
    /// Those of [`GroupChat::run`]; the error is printed too.
    pub async fn run(
        &mut self,
        chat: &mut GroupChat,
        task: impl Into<Task>,
    ) -> Result<ChatResult, ChatError> {
        let (tx, mut rx) = unbounded_channel();
        let run = chat.run_observed(task.into(), tx);
        tokio::pin!(run);
        let result = loop {
            tokio::select! {
                biased;
                Some(event) = rx.recv() => self.print(&event),
                result = &mut run => break result,
            }
        };
        while let Ok(event) = rx.try_recv() {
            self.print(&event);
        }
        self.print_result(&result);
        result
    }

    /// Prints one event.
    pub fn print(&mut self, event: &ChatEvent) {
        // Best effort: the view must never stop or fail the chat it shows.
        let _ = self.write_event(event);
    }

    fn print_result(&mut self, result: &Result<ChatResult, ChatError>) {
        let _ = self.write_result(result);
    }

    /// Streamed text: the speaker's name once, then the text as it arrives, flushed.
    fn write_delta(&mut self, agent: &Arc<str>, text: &str) -> io::Result<()> {
        if self.line.as_ref() != Some(agent) {
            self.end_line()?;
            write!(self.out, "{agent}: ")?;
            self.line = Some(agent.clone());
            self.streamed = Some((agent.clone(), String::new()));
        }
        if let Some((_, shown)) = &mut self.streamed {
            shown.push_str(text);
        }
        write!(self.out, "{text}")?;
        self.out.flush()
    }

    /// Ends a line of streamed text, if one is open.
    fn end_line(&mut self) -> io::Result<()> {
        if self.line.take().is_some() {
            writeln!(self.out)?;
        }
        Ok(())
    }

    fn write_event(&mut self, event: &ChatEvent) -> io::Result<()> {
        if let ChatEvent::TokenDelta { agent, text } = event {
            return self.write_delta(agent, text);
        }
        if let ChatEvent::Message(message) = event {
            let already_shown = matches!(
                (&self.streamed, message.text()),
                (Some((agent, shown)), Some(text))
                    if Some(&**agent) == message.source() && shown == text
            );
            if already_shown {
                self.streamed = None;
                return self.end_line();
            }
        }
        let quiet = matches!(event, ChatEvent::CallQueued { .. })
            || (!self.calls
                && matches!(
                    event,
                    ChatEvent::CallAdmitted { .. } | ChatEvent::CallFinished { .. }
                ));
        if !quiet {
            self.end_line()?;
        }
        match event {
            ChatEvent::Message(message) => self.write_message(message),
            ChatEvent::SpeakerSelected { name } => writeln!(self.out, "-- {name}"),
            ChatEvent::CallAdmitted { agent, key, wait }
                if self.calls && *wait >= self.min_wait =>
            {
                writeln!(
                    self.out,
                    "   [quota] {agent} waited {:.2} s on {key}",
                    wait.as_secs_f64()
                )
            }
            ChatEvent::CallFinished {
                agent,
                model,
                usage,
                attempts,
                error,
                cost_nanos,
                cached,
                ..
            } if self.calls => {
                let plural = if *attempts == 1 { "" } else { "s" };
                match (usage, error) {
                    (Some(u), None) if *cached => writeln!(
                        self.out,
                        "   [call] {agent} {model}: {} + {} tokens from the response cache (no quota, no cost)",
                        u.prompt_tokens, u.completion_tokens,
                    ),
                    (_, Some(error)) => writeln!(
                        self.out,
                        "   [call] {agent} {model}: failed after {attempts} attempt{plural}: {error}"
                    ),
                    (Some(u), None) => writeln!(
                        self.out,
                        "   [call] {agent} {model}: {} + {} tokens, {}, {attempts} attempt{plural}",
                        u.prompt_tokens,
                        u.completion_tokens,
                        Dollars(*cost_nanos),
                    ),
                    (None, None) => writeln!(
                        self.out,
                        "   [call] {agent} {model}: no usage reported, {}, {attempts} attempt{plural}",
                        Dollars(*cost_nanos),
                    ),
                }
            }
            ChatEvent::Stopped(reason) => writeln!(self.out, "stopped: {reason}"),
            // `run` prints the result itself; a caller feeding events by hand gets it here.
            ChatEvent::Finished(result) => self.write_result(result),
            _ => Ok(()),
        }
    }

    fn write_message(&mut self, message: &Message) -> io::Result<()> {
        let who = message.source().unwrap_or("user");
        match &message.content {
            Content::Text { text } => writeln!(self.out, "{who}: {text}"),
            Content::ToolCalls { calls } => {
                for call in calls.iter() {
                    writeln!(self.out, "{who} -> tool {}({})", call.name, call.arguments)?;
                }
                Ok(())
            }
            Content::ToolResults { results } => {
                for r in results.iter() {
                    let mark = if r.is_error { " (error)" } else { "" };
                    writeln!(self.out, "tool {} -> {}{mark}", r.name, r.content)?;
                }
                Ok(())
            }
            Content::Handoff { target, text } => {
                writeln!(self.out, "{who} hands off to {target}: {text}")
            }
            Content::Stop { text } => writeln!(self.out, "{who} stops: {text}"),
            _ => writeln!(self.out, "{who}: {:?}", message.content),
        }
    }

    fn write_result(&mut self, result: &Result<ChatResult, ChatError>) -> io::Result<()> {
        match result {
            Ok(r) => {
                let t = &r.usage.total;
                writeln!(
                    self.out,
                    "usage: {} call{}, {} + {} tokens, {}, in {:.2} s",
                    t.calls,
                    if t.calls == 1 { "" } else { "s" },
                    t.prompt_tokens,
                    t.completion_tokens,
                    Dollars(t.cost_nanos),
                    r.wall_time.as_secs_f64(),
                )?;
                if r.usage.by_agent.len() > 1 {
                    for (agent, u) in &r.usage.by_agent {
                        writeln!(
                            self.out,
                            "  {agent}: {} call{}, {} tokens, {}",
                            u.calls,
                            if u.calls == 1 { "" } else { "s" },
                            u.total_tokens(),
                            Dollars(u.cost_nanos),
                        )?;
                    }
                }
                self.out.flush()
            }
            Err(e) => {
                writeln!(self.out, "chat failed: {e}")?;
                self.out.flush()
            }
        }
    }
}

/// Nanodollars shown as dollars with six decimals (a cheap call costs a few millionths).
#[derive(Debug, Clone, Copy)]
pub struct Dollars(pub u64);

impl fmt::Display for Dollars {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "${:.6}", nanos_to_usd(self.0))
    }
}

#[cfg(test)]
mod tests {
    use agent_core::{CallError, ModelError, StopReason, ToolCall, ToolResult, Usage};

    use super::*;

    fn printed(events: &[ChatEvent]) -> String {
        let mut printer = ConsolePrinter::new(Vec::new());
        for e in events {
            printer.print(e);
        }
        String::from_utf8(printer.into_inner()).unwrap_or_default()
    }

    #[test]
    fn prints_speakers_messages_and_tool_traffic() {
        let out = printed(&[
            ChatEvent::SpeakerSelected {
                name: Arc::from("writer"),
            },
            ChatEvent::Message(Message::assistant("writer", "A poem.")),
            ChatEvent::Message(Message::tool_calls(
                "writer",
                vec![ToolCall::new("c1", "weather", r#"{"city":"Oslo"}"#)],
            )),
            ChatEvent::Message(Message::tool_results(
                "writer",
                vec![ToolResult {
                    call_id: Arc::from("c1"),
                    name: Arc::from("weather"),
                    content: Arc::from("snow"),
                    is_error: false,
                }],
            )),
            ChatEvent::Stopped(StopReason::External),
        ]);
        assert_eq!(
            out,
            "-- writer\nwriter: A poem.\nwriter -> tool weather({\"city\":\"Oslo\"})\n\
             tool weather -> snow\nstopped: External termination requested\n"
        );
    }

    #[test]
    fn prints_quota_waits_above_the_threshold_and_call_costs() {
        let admitted = |ms| ChatEvent::CallAdmitted {
            agent: Arc::from("critic"),
            key: Arc::from("openai/gpt-4o"),
            wait: Duration::from_millis(ms),
        };
        let out = printed(&[
            admitted(0),
            admitted(1500),
            ChatEvent::CallFinished {
                agent: Arc::from("critic"),
                key: Arc::from("openai/gpt-4o"),
                model: Arc::from("openai/gpt-4o"),
                cost_nanos: 1_250_000,
                usage: Some(Usage::new(300, 50)),
                attempts: 2,
                error: None,
                cached: false,
            },
        ]);
        assert_eq!(
            out,
            "   [quota] critic waited 1.50 s on openai/gpt-4o\n   \
             [call] critic openai/gpt-4o: 300 + 50 tokens, $0.001250, 2 attempts\n"
        );
    }

    #[test]
    fn failed_calls_say_why_and_call_lines_can_be_turned_off() {
        let failed = ChatEvent::CallFinished {
            agent: Arc::from("a"),
            key: Arc::from("k"),
            model: Arc::from("m"),
            cost_nanos: 0,
            usage: None,
            attempts: 1,
            error: Some(CallError::Model(ModelError::Cancelled)),
            cached: false,
        };
        let out = printed(std::slice::from_ref(&failed));
        assert!(
            out.starts_with("   [call] a m: failed after 1 attempt: "),
            "{out}"
        );
        let mut quiet = ConsolePrinter::new(Vec::new()).calls(false);
        quiet.print(&failed);
        assert!(quiet.into_inner().is_empty());
    }

    #[test]
    fn streamed_tokens_print_live_on_one_line_and_the_message_is_not_repeated() {
        let delta = |agent: &str, text: &str| ChatEvent::TokenDelta {
            agent: Arc::from(agent),
            text: text.to_owned(),
        };
        let out = printed(&[
            ChatEvent::SpeakerSelected {
                name: Arc::from("writer"),
            },
            delta("writer", "A "),
            delta("writer", "poem."),
            ChatEvent::CallFinished {
                agent: Arc::from("writer"),
                key: Arc::from("k"),
                model: Arc::from("m"),
                cost_nanos: 0,
                usage: Some(Usage::new(3, 2)),
                attempts: 1,
                error: None,
                cached: false,
            },
            ChatEvent::Message(Message::assistant("writer", "A poem.")),
            delta("critic", "Good"),
            ChatEvent::Message(Message::assistant("critic", "Good.")),
        ]);
        assert_eq!(
            out,
            "-- writer\nwriter: A poem.\n   [call] writer m: 3 + 2 tokens, $0.000000, 1 attempt\n\
             critic: Good\ncritic: Good.\n"
        );
    }
}
