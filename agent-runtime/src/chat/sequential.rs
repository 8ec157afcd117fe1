//! Sequential chats (AG2's `initiate_chats`): each chat's summary is carried into the next task.

use agent_core::{Content, Message};

use super::error::ChatError;
use super::group_chat::GroupChat;
use super::result::ChatResult;
use super::task::Task;

/// One chat of a sequence and its task.
#[derive(Debug)]
pub struct ChatSpec {
    chat: GroupChat,
    task: Task,
}

impl ChatSpec {
    /// Runs `chat` on `task` (plus the carried-over summaries).
    pub fn new(chat: GroupChat, task: impl Into<Task>) -> Self {
        Self {
            chat,
            task: task.into(),
        }
    }
}

/// A sequence that failed part-way. The chats that finished keep their results.
#[derive(Debug, thiserror::Error)]
#[error("chat {index} of the sequence failed: {error}")]
#[non_exhaustive]
pub struct SequenceError {
    /// The index of the failed chat.
    pub index: usize,
    /// The results of the chats before it.
    pub completed: Vec<ChatResult>,
    /// What failed (with that chat's transcript).
    #[source]
    pub error: ChatError,
}

/// Appends AG2's carryover to a task: `"\nContext: \n"` and the summaries joined by newlines.
fn with_carryover(task: Task, summaries: &[String]) -> Task {
    if summaries.is_empty() {
        return task;
    }
    let context = format!("\nContext: \n{}", summaries.join("\n"));
    match task {
        Task::Text(text) => Task::Text(format!("{text}{context}").into()),
        Task::Messages(mut messages) => {
            match messages.last_mut() {
                Some(Message {
                    content: Content::Text { text },
                    ..
                }) => *text = format!("{text}{context}").into(),
                _ => messages.push(Message::user(context.trim_start().to_owned())),
            }
            Task::Messages(messages)
        }
        Task::Resume => Task::Text(context.trim_start().to_owned().into()),
    }
}

/// Runs chats one after another; each task gets the summaries of **all** earlier chats appended
/// as `"\nContext: \n" + summaries joined by "\n"` (AG2's carryover). A chat that is cancelled
/// ends the sequence (its result is the last one returned).
///
/// # Errors
/// The first chat that fails, with the results of those before it.
pub async fn run_sequential(
    chats: impl IntoIterator<Item = ChatSpec>,
) -> Result<Vec<ChatResult>, SequenceError> {
    let mut results: Vec<ChatResult> = Vec::new();
    let mut summaries: Vec<String> = Vec::new();
    for (index, spec) in chats.into_iter().enumerate() {
        let ChatSpec { mut chat, task } = spec;
        match chat.run(with_carryover(task, &summaries)).await {
            Ok(result) => {
                let cancelled = result.stop_reason == agent_core::StopReason::Cancelled;
                summaries.push(result.summary.clone());
                results.push(result);
                if cancelled {
                    break;
                }
            }
            Err(error) => {
                return Err(SequenceError {
                    index,
                    completed: results,
                    error,
                });
            }
        }
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carryover_is_appended_like_ag2() {
        let t = with_carryover(Task::from("next"), &["a".into(), "b".into()]);
        assert_eq!(t, Task::from("next\nContext: \na\nb"));
        let t = with_carryover(Task::from(Message::user("m")), &["s".into()]);
        match t {
            Task::Messages(m) => assert_eq!(m[0].text(), Some("m\nContext: \ns")),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(with_carryover(Task::from("x"), &[]), Task::from("x"));
    }
}
