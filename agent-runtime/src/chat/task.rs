//! What a chat run starts from: a task (text or messages), or nothing to resume.

use std::sync::Arc;

use agent_core::Message;

/// The input of one chat run.
///
/// - A text task becomes one user message attributed to the chat's task source (`"user"` by
///   default; the initiator in a [two-agent chat](super::GroupChat::two_agent)).
/// - Messages are appended as given.
/// - [`Task::Resume`] (or an empty message list) appends nothing: the chat continues where it
///   stopped. On a chat with an empty thread there is nothing to continue, and the run fails with
///   [`ChatErrorKind::NothingToResume`](super::ChatErrorKind::NothingToResume) before any call.
///
/// A run **with** a task is a new conversation turn in AG2's sense (`initiate_chat`): it resets
/// the `max_consecutive_auto_reply` counters. A resume keeps them.
///
/// ```
/// use agent_runtime::chat::Task;
/// use agent_core::Message;
///
/// assert!(matches!(Task::from("plan a trip"), Task::Text(_)));
/// assert!(matches!(Task::from(Message::user("hi")), Task::Messages(m) if m.len() == 1));
/// assert!(Task::from(Vec::<Message>::new()).is_resume());
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Task {
    /// A text task.
    Text(Arc<str>),
    /// Task messages, appended as given.
    Messages(Vec<Message>),
    /// No new task: continue the conversation.
    Resume,
}

impl Task {
    /// True when the run adds no task messages.
    pub fn is_resume(&self) -> bool {
        match self {
            Task::Resume => true,
            Task::Messages(m) => m.is_empty(),
            Task::Text(_) => false,
        }
    }

    /// The task as messages, a text task attributed to `source`.
    pub(crate) fn into_messages(self, source: &Arc<str>) -> Vec<Message> {
        match self {
            Task::Text(text) => vec![Message::user_from(source.clone(), text)],
            Task::Messages(m) => m,
            Task::Resume => Vec::new(),
        }
    }
}

impl From<&str> for Task {
    fn from(text: &str) -> Self {
        Task::Text(Arc::from(text))
    }
}

impl From<String> for Task {
    fn from(text: String) -> Self {
        Task::Text(Arc::from(text))
    }
}

impl From<Arc<str>> for Task {
    fn from(text: Arc<str>) -> Self {
        Task::Text(text)
    }
}

impl From<Message> for Task {
    fn from(message: Message) -> Self {
        Task::Messages(vec![message])
    }
}

impl From<Vec<Message>> for Task {
    fn from(messages: Vec<Message>) -> Self {
        Task::Messages(messages)
    }
}
