//! Two-agent chats (AG2's `initiate_chat`): an initiator opens, then the two agents alternate.

use agent_core::{Agent, Message};

use super::group_chat::{GroupChat, GroupChatBuilder};

impl GroupChat {
    /// A two-agent chat, AG2's `initiator.initiate_chat(recipient, message, max_turns=…)`.
    ///
    /// The run's text task is the initiator's opening message (attributed to the initiator). A
    /// task written by a participant counts as that participant's turn, so the recipient answers
    /// it, then they alternate — in every run, not only the first. Preset, and overridable on the
    /// returned builder:
    /// - `max_turns(N)` counts **exchanges**: at most `2N` messages in a run (the opening message,
    ///   then `2N − 1` replies), as in AG2; the stop reason reports `N`;
    /// - the termination predicate is AG2's default, [`Message::is_terminate`]: a text message
    ///   that is exactly `TERMINATE` (checked on the opening message too) stops with
    ///   [`StopReason::TerminationMessage`](agent_core::StopReason::TerminationMessage);
    /// - a reply ending with a stop message (a [`UserProxy`](agent_core::UserProxy) whose human
    ///   types `exit`) stops with
    ///   [`StopReason::StopRequested`](agent_core::StopReason::StopRequested), as in every chat;
    /// - each agent's `max_consecutive_auto_reply` applies, and
    ///   [`max_consecutive_auto_reply`](GroupChatBuilder::max_consecutive_auto_reply) sets a
    ///   default for both.
    ///
    /// ```
    /// use agent_core::{Agent, AgentError, AgentReply, Message, StopReason, TurnContext};
    /// use agent_runtime::chat::GroupChat;
    ///
    /// struct Counter(&'static str);
    ///
    /// #[agent_core::async_trait]
    /// impl Agent for Counter {
    ///     fn name(&self) -> &str { self.0 }
    ///     async fn reply(&self, history: &[Message], _ctx: &dyn TurnContext) -> Result<AgentReply, AgentError> {
    ///         Ok(AgentReply::message(Message::assistant(self.0, history.len().to_string())))
    ///     }
    /// }
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let mut chat = GroupChat::two_agent(Counter("student"), Counter("teacher"))
    ///     .max_turns(2)
    ///     .build()?;
    /// let result = chat.run("What is 2 + 2?").await?;
    /// let who: Vec<_> = result.messages.iter().map(|m| m.source().unwrap()).collect();
    /// assert_eq!(who, ["student", "teacher", "student", "teacher"]);
    /// assert_eq!(result.stop_reason, StopReason::MaxTurns { max: 2 });
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub fn two_agent(
        initiator: impl Agent + 'static,
        recipient: impl Agent + 'static,
    ) -> GroupChatBuilder {
        let source = initiator.name().to_owned();
        // Initiator first, as AG2 lists them; the initiator's opening message makes it the
        // previous speaker, so the rotation hands the first reply to the recipient.
        GroupChat::builder()
            .participant(initiator)
            .participant(recipient)
            .task_source(source)
            .is_termination_msg(Message::is_terminate)
            .count_exchanges()
    }
}
