//! Speaker selection: who speaks next in a group chat, and the rules that narrow the choice
//! (transition graph, repeat rule).
//!
//! Every method first computes the **candidates**: all participants, or the allowed successors of
//! the previous speaker when a [transition graph](Transitions) is set, minus the previous speaker
//! when repeats are off. No candidate ends the chat with
//! [`StopReason::NoEligibleSpeaker`](agent_core::StopReason::NoEligibleSpeaker). Then:
//!
//! - [`RoundRobin`](SpeakerSelection::RoundRobin): the first candidate after the previous speaker
//!   in participant order (so a resumed or reloaded chat continues the rotation);
//! - [`Random`](SpeakerSelection::Random): a seeded, reproducible uniform pick;
//! - [`Llm`](SpeakerSelection::Llm): a model picks (see [`LlmSelector`]);
//! - [`Handoffs`](SpeakerSelection::Handoffs): Swarm style, the target of the latest handoff,
//!   otherwise the same speaker again;
//! - [`Manual`](SpeakerSelection::Manual): a human picks by name or number.
//!
//! A [candidate function](super::GroupChatBuilder::candidate_func) may replace the candidates
//! each turn. A [selector function](super::GroupChatBuilder::selector_func) runs before any
//! method and may pick anyone (it overrides the rules); returning `None` defers to the method. A
//! [selection function](super::GroupChatBuilder::select_speaker_with) also sees the candidates
//! and may end the chat.

use std::fmt;
use std::sync::Arc;

use agent_core::{
    CallError, CallKind, ChatModel, ChatRequest, Content, HistoryPolicy, InputSource, Message,
    Role, StopReason, TurnContext,
};
use tokio_util::sync::CancellationToken;

use super::error::{ChatConfigError, ChatErrorKind};
use crate::context::SchedulerContext;

/// How the next speaker is chosen. The exact rules of each method are in `docs/chats.md`.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum SpeakerSelection {
    /// Participants in order, continuing after the previous speaker.
    #[default]
    RoundRobin,
    /// A uniform pick among the candidates from a seeded generator (reproducible, and its state is
    /// saved with the chat).
    Random {
        /// The generator's seed.
        seed: u64,
    },
    /// A model picks the next speaker.
    Llm(LlmSelector),
    /// Swarm-style handoffs: the first participant starts; the next speaker is the target of the
    /// latest [`Content::Handoff`] message; without a handoff the same speaker continues.
    Handoffs,
    /// A human picks through an input source (a name or a 1-based number; empty input or `q`
    /// falls back to round robin, as do three invalid answers).
    Manual(Arc<dyn InputSource>),
}

impl fmt::Debug for SpeakerSelection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpeakerSelection::RoundRobin => f.write_str("RoundRobin"),
            SpeakerSelection::Random { seed } => {
                f.debug_struct("Random").field("seed", seed).finish()
            }
            SpeakerSelection::Llm(s) => f.debug_tuple("Llm").field(s).finish(),
            SpeakerSelection::Handoffs => f.write_str("Handoffs"),
            SpeakerSelection::Manual(_) => f.write_str("Manual(..)"),
        }
    }
}

/// Model-based speaker selection (AutoGen-agentchat's `SelectorGroupChat`).
///
/// The prompt template may use `{roles}` (every participant as `name: description`),
/// `{participants}` (the candidates, as `['a', 'b']`) and `{history}` (the thread's text
/// messages as `source: text` lines). The answer is parsed by whole-word match of participant
/// names (`_` may also be written as a space or `\_`). An answer naming no participant, several,
/// or one who may not speak next (for example the previous speaker when repeats are off) is sent
/// back with feedback and retried, up to `max_attempts` calls in all. With a single candidate
/// no model call is made.
///
/// **Fallback** after the last attempt: the first candidate after the previous speaker in
/// participant order. Candidates never include a speaker the rules exclude, so the fallback cannot
/// repeat the previous speaker when repeats are off (AutoGen falls back to the previous speaker
/// and can loop forever: microsoft/autogen#7471).
///
/// Selector calls go through the scheduler like any other call, on the chat's budget, under the
/// chat's own name with [`CallKind::SpeakerSelection`]; they appear in the result's usage.
///
/// ```
/// use agent_core::ScriptedModel;
/// use agent_runtime::chat::LlmSelector;
///
/// let selector = LlmSelector::new(ScriptedModel::new("test/selector")).max_attempts(2);
/// assert_eq!(selector.attempts(), 2);
/// ```
#[derive(Clone)]
pub struct LlmSelector {
    model: Arc<dyn ChatModel>,
    prompt: Arc<str>,
    max_attempts: u32,
    max_completion_tokens: Option<u32>,
    history: Option<Arc<dyn HistoryPolicy>>,
}

impl fmt::Debug for LlmSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LlmSelector")
            .field("model", &self.model.id())
            .field("max_attempts", &self.max_attempts)
            .field("history_policy", &self.history.is_some())
            .finish_non_exhaustive()
    }
}

impl LlmSelector {
    /// AutoGen-agentchat's default selector prompt.
    pub const DEFAULT_PROMPT: &'static str = "You are in a role play game. The following roles are available:
{roles}.
Read the following conversation. Then select the next role from {participants} to play. Only return the role.

{history}

Read the above conversation. Then select the next role from {participants} to play. Only return the role.";

    /// A selector using `model` with the default prompt and 3 attempts.
    pub fn new(model: impl ChatModel + 'static) -> Self {
        Self::from_arc(Arc::new(model))
    }

    /// A selector using a shared model.
    pub fn from_arc(model: Arc<dyn ChatModel>) -> Self {
        Self {
            model,
            prompt: Arc::from(Self::DEFAULT_PROMPT),
            max_attempts: 3,
            max_completion_tokens: None,
            history: None,
        }
    }

    /// The selector's own history window (AutoGen's `model_context`): `{history}` shows
    /// `policy`'s view of the thread instead of the whole thread. The agents' own policies are
    /// unaffected. A policy that calls a model (a summary) does so through the chat's context, so
    /// the call is charged to the chat's budget.
    ///
    /// ```
    /// use agent_core::ScriptedModel;
    /// use agent_core::history::LastN;
    /// use agent_runtime::chat::LlmSelector;
    ///
    /// let selector = LlmSelector::new(ScriptedModel::new("test/selector")).history(LastN::new(5));
    /// # let _ = selector;
    /// ```
    #[must_use]
    pub fn history(mut self, policy: impl HistoryPolicy + 'static) -> Self {
        self.history = Some(Arc::new(policy));
        self
    }

    /// Sets the prompt template (`{roles}`, `{participants}`, `{history}`).
    #[must_use]
    pub fn prompt(mut self, template: impl Into<Arc<str>>) -> Self {
        self.prompt = template.into();
        self
    }

    /// Sets how many model calls one selection may make (default 3; must be at least 1).
    #[must_use]
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Caps the completion tokens of each selector call (a name is short; this keeps the
    /// scheduler's admission estimate small).
    #[must_use]
    pub fn max_completion_tokens(mut self, max: u32) -> Self {
        self.max_completion_tokens = Some(max);
        self
    }

    /// The configured attempt count.
    pub fn attempts(&self) -> u32 {
        self.max_attempts
    }
}

/// What a [selector function](super::GroupChatBuilder::selector_func), a
/// [selection function](super::GroupChatBuilder::select_speaker_with) or a
/// [candidate function](super::GroupChatBuilder::candidate_func) sees.
#[derive(Debug)]
#[non_exhaustive]
pub struct SelectorInput<'a> {
    /// The whole thread.
    pub messages: &'a [Message],
    /// Every participant's name, in order.
    pub participants: &'a [Arc<str>],
    /// Who spoke last, if anyone has.
    pub previous: Option<&'a str>,
    /// Who may speak next under the transition graph, the repeat rule and the candidate function,
    /// in participant order. Empty for a candidate function (it is the one that decides them).
    pub candidates: &'a [Arc<str>],
}

/// A selector function: a participant's name, or `None` to let the configured method choose.
pub type SelectorFn = Arc<dyn Fn(&SelectorInput<'_>) -> Option<String> + Send + Sync>;

/// A candidate function (AutoGen's `candidate_func`): the names the selection method may choose
/// from this turn.
pub type CandidateFn = Arc<dyn Fn(&SelectorInput<'_>) -> Vec<String> + Send + Sync>;

/// What a [selection function](super::GroupChatBuilder::select_speaker_with) decides.
///
/// ```
/// use agent_runtime::chat::SpeakerChoice;
///
/// let choose = |last: Option<&str>| match last {
///     Some("reviewer") => SpeakerChoice::End("the review is done".into()),
///     Some(_) => SpeakerChoice::Default,
///     None => SpeakerChoice::Speaker("writer".into()),
/// };
/// assert_eq!(choose(None), SpeakerChoice::Speaker("writer".into()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SpeakerChoice {
    /// This participant speaks next (it overrides the graph, the repeat rule and the candidates).
    Speaker(String),
    /// The configured selection method chooses, among the candidates.
    Default,
    /// The chat ends here with [`StopReason::Custom`] carrying this reason (AG2: a
    /// `speaker_selection_method` returning `None` ends the chat).
    End(String),
}

/// A selection function, as stored.
pub(crate) type ChoiceFn = Arc<dyn Fn(&SelectorInput<'_>) -> SpeakerChoice + Send + Sync>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TransitionKind {
    Allowed,
    Disallowed,
}

/// A speaker transition graph (AG2's `allowed_or_disallowed_speaker_transitions`).
///
/// With [`allowed`](Self::allowed), a speaker may be followed only by the listed agents; a speaker
/// with no entry has no successor, so the chat stops after it with
/// [`StopReason::NoEligibleSpeaker`](agent_core::StopReason::NoEligibleSpeaker). With
/// [`disallowed`](Self::disallowed), the listed agents may not follow; a speaker with no entry may
/// be followed by anyone. The graph does not constrain the first speaker. Unknown names are
/// rejected at `build()`.
///
/// ```
/// use agent_runtime::chat::Transitions;
///
/// let graph = Transitions::allowed([("planner", vec!["coder"]), ("coder", vec!["reviewer"])]);
/// # let _ = graph;
/// ```
#[derive(Debug, Clone)]
pub struct Transitions {
    kind: TransitionKind,
    edges: Vec<(String, Vec<String>)>,
}

impl Transitions {
    /// Each speaker may be followed only by the listed agents.
    pub fn allowed<I, K, V, N>(map: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: IntoIterator<Item = N>,
        N: Into<String>,
    {
        Self::collect(TransitionKind::Allowed, map)
    }

    /// Each speaker may be followed by anyone but the listed agents.
    pub fn disallowed<I, K, V, N>(map: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: IntoIterator<Item = N>,
        N: Into<String>,
    {
        Self::collect(TransitionKind::Disallowed, map)
    }

    fn collect<I, K, V, N>(kind: TransitionKind, map: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: IntoIterator<Item = N>,
        N: Into<String>,
    {
        Self {
            kind,
            edges: map
                .into_iter()
                .map(|(k, v)| (k.into(), v.into_iter().map(Into::into).collect()))
                .collect(),
        }
    }

    /// The successor list of every participant, by index, in participant order.
    fn resolve(&self, roster: &Roster) -> Result<Vec<Vec<usize>>, ChatConfigError> {
        let n = roster.len();
        let mut listed = vec![vec![false; n]; n];
        let mut has_entry = vec![false; n];
        for (from, tos) in &self.edges {
            let f = roster.require("transitions", from)?;
            has_entry[f] = true;
            for to in tos {
                let t = roster.require("transitions", to)?;
                listed[f][t] = true;
            }
        }
        Ok((0..n)
            .map(|f| {
                (0..n)
                    .filter(|&t| match self.kind {
                        TransitionKind::Allowed => listed[f][t],
                        TransitionKind::Disallowed => !has_entry[f] || !listed[f][t],
                    })
                    .collect()
            })
            .collect())
    }
}

/// The participants' names, by index.
#[derive(Debug, Clone)]
pub(crate) struct Roster {
    names: Vec<Arc<str>>,
}

impl Roster {
    pub(crate) fn new(names: Vec<Arc<str>>) -> Self {
        Self { names }
    }

    pub(crate) fn len(&self) -> usize {
        self.names.len()
    }

    pub(crate) fn names(&self) -> &[Arc<str>] {
        &self.names
    }

    pub(crate) fn name(&self, i: usize) -> &Arc<str> {
        &self.names[i]
    }

    pub(crate) fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| &**n == name)
    }

    pub(crate) fn owned_names(&self) -> Vec<String> {
        self.names.iter().map(|n| n.to_string()).collect()
    }

    pub(crate) fn require(
        &self,
        context: &'static str,
        name: &str,
    ) -> Result<usize, ChatConfigError> {
        self.index(name)
            .ok_or_else(|| ChatConfigError::UnknownAgent {
                context,
                name: name.to_owned(),
                participants: self.owned_names(),
            })
    }
}

/// Which speakers may speak twice in a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AllowRepeat {
    All,
    Nobody,
    Only(Vec<bool>),
}

impl AllowRepeat {
    fn allows(&self, speaker: usize) -> bool {
        match self {
            AllowRepeat::All => true,
            AllowRepeat::Nobody => false,
            AllowRepeat::Only(v) => v.get(speaker).copied().unwrap_or(false),
        }
    }
}

/// The rules that narrow the choice: graph and repeat rule.
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    successors: Option<Vec<Vec<usize>>>,
    repeat: AllowRepeat,
}

impl Rules {
    pub(crate) fn new(
        transitions: Option<&Transitions>,
        repeat: AllowRepeat,
        roster: &Roster,
    ) -> Result<Self, ChatConfigError> {
        Ok(Self {
            successors: transitions.map(|t| t.resolve(roster)).transpose()?,
            repeat,
        })
    }

    /// True when every participant is always a candidate except possibly through the repeat rule
    /// (the round-robin fast path applies).
    pub(crate) fn is_open(&self) -> bool {
        self.successors.is_none()
    }

    /// Fills `out` with the candidates after `previous`, in participant order.
    pub(crate) fn candidates(&self, n: usize, previous: Option<usize>, out: &mut Vec<usize>) {
        out.clear();
        match previous {
            None => out.extend(0..n),
            Some(p) => {
                match &self.successors {
                    Some(s) => out.extend_from_slice(&s[p]),
                    None => out.extend(0..n),
                }
                if !self.repeat.allows(p) {
                    out.retain(|&c| c != p);
                }
            }
        }
    }
}

/// The first of `candidates` after `previous` in participant order (wrapping); the first
/// candidate when nobody spoke yet.
pub(crate) fn rotation_next(
    n: usize,
    previous: Option<usize>,
    candidates: &[usize],
) -> Option<usize> {
    if n == 0 {
        return None;
    }
    let start = previous.map_or(0, |p| (p + 1) % n);
    candidates
        .iter()
        .copied()
        .min_by_key(|&c| (c + n - start) % n)
}

/// SplitMix64: a one-word generator whose whole state is saved with the chat. Hand-written
/// because `rand`'s generators neither promise a stable sequence across versions nor serialize,
/// and a reloaded chat must continue the exact same sequence.
pub(crate) fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform index below `n` (multiply-shift, no modulo bias worth the name).
pub(crate) fn random_below(state: &mut u64, n: usize) -> usize {
    ((u128::from(next_random(state)) * n as u128) >> 64) as usize
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// True when `needle` occurs in `text` as a whole word.
fn contains_word(text: &str, needle: &str) -> bool {
    if needle.is_empty() {
        return false;
    }
    text.match_indices(needle).any(|(i, m)| {
        let before = text[..i].chars().next_back();
        let after = text[i + m.len()..].chars().next();
        !before.is_some_and(is_word_char) && !after.is_some_and(is_word_char)
    })
}

/// The participants `text` names as whole words (`_` may also appear as a space or `\_`).
pub(crate) fn mentioned(text: &str, roster: &Roster) -> Vec<usize> {
    (0..roster.len())
        .filter(|&i| {
            let name = &**roster.name(i);
            contains_word(text, name)
                || (name.contains('_')
                    && (contains_word(text, &name.replace('_', " "))
                        || contains_word(text, &name.replace('_', "\\_"))))
        })
        .collect()
}

/// Fills `{key}` placeholders (`{roles}`, `{participants}`, `{history}`, …) in one pass, so text
/// inside a value that looks like a placeholder is left alone; unknown placeholders stay.
pub(crate) fn fill_template(template: &str, values: &[(&str, &str)]) -> String {
    let mut out =
        String::with_capacity(template.len() + values.iter().map(|(_, v)| v.len()).sum::<usize>());
    let mut rest = template;
    'outer: while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let tail = &rest[open..];
        for (key, value) in values {
            if let Some(after) = tail
                .strip_prefix('{')
                .and_then(|t| t.strip_prefix(key))
                .and_then(|t| t.strip_prefix('}'))
            {
                out.push_str(value);
                rest = after;
                continue 'outer;
            }
        }
        out.push('{');
        rest = &tail[1..];
    }
    out.push_str(rest);
    out
}

fn python_list<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let items: Vec<String> = names.map(|n| format!("'{n}'")).collect();
    format!("[{}]", items.join(", "))
}

fn history_text(messages: &[Message]) -> String {
    let mut out = String::new();
    for m in messages {
        let Some(text) = m.text() else { continue };
        if !out.is_empty() {
            out.push('\n');
        }
        let who = m.source().unwrap_or(match m.role {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
            _ => "other",
        });
        out.push_str(who);
        out.push_str(": ");
        out.push_str(text);
    }
    out
}

/// The outcome of one selection step.
pub(crate) enum Selected {
    Speaker(usize),
    Stop(StopReason),
    Fail(Box<ChatErrorKind>),
}

/// What the LLM selection needs from the chat.
pub(crate) struct LlmTurn<'a> {
    pub(crate) selector: &'a LlmSelector,
    pub(crate) ctx: &'a SchedulerContext,
    pub(crate) roster: &'a Roster,
    pub(crate) descriptions: &'a [Arc<str>],
    pub(crate) messages: &'a [Message],
    pub(crate) candidates: &'a [usize],
    pub(crate) previous: Option<usize>,
    pub(crate) cancel: &'a CancellationToken,
}

fn call_outcome(e: CallError) -> Selected {
    match e {
        CallError::BudgetExhausted(b) => Selected::Stop(StopReason::BudgetExhausted(b)),
        CallError::Cancelled => Selected::Stop(StopReason::Cancelled),
        other => Selected::Fail(Box::new(ChatErrorKind::Selector(other))),
    }
}

impl LlmTurn<'_> {
    fn prompt(&self, messages: &[Message]) -> String {
        let mut roles = String::new();
        for (name, description) in self.roster.names().iter().zip(self.descriptions) {
            if !roles.is_empty() {
                roles.push('\n');
            }
            let line = format!("{name}: {description}");
            roles.push_str(
                line.split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
                    .as_str(),
            );
        }
        let participants = python_list(self.candidates.iter().map(|&c| &**self.roster.name(c)));
        let history = history_text(messages);
        fill_template(
            &self.selector.prompt,
            &[
                ("roles", &roles),
                ("participants", &participants),
                ("history", &history),
            ],
        )
    }

    fn feedback(&self, named: &[usize]) -> String {
        let allowed = python_list(self.candidates.iter().map(|&c| &**self.roster.name(c)));
        match named {
            [] => format!(
                "No participant name was found in your answer. Answer with exactly one of {allowed}."
            ),
            [one] if Some(*one) == self.previous => format!(
                "'{}' just spoke and may not speak twice in a row. Answer with exactly one of {allowed}.",
                self.roster.name(*one)
            ),
            [one] => format!(
                "'{}' may not speak next. Answer with exactly one of {allowed}.",
                self.roster.name(*one)
            ),
            several => format!(
                "Your answer named several participants ({}). Answer with exactly one of {allowed}.",
                python_list(several.iter().map(|&c| &**self.roster.name(c)))
            ),
        }
    }

    pub(crate) async fn select(&self) -> Selected {
        let windowed;
        let history = match &self.selector.history {
            None => self.messages,
            Some(policy) => {
                let view = tokio::select! {
                    biased;
                    () = self.cancel.cancelled() => return Selected::Stop(StopReason::Cancelled),
                    r = policy.view(self.messages, self.ctx) => r,
                };
                windowed = match view {
                    Ok(v) => v,
                    Err(e) => return call_outcome(e),
                };
                &windowed[..]
            }
        };
        let mut prompt = vec![Message::user(self.prompt(history))];
        for attempt in 0..self.selector.max_attempts {
            let mut request = ChatRequest::new(prompt.clone());
            if let Some(max) = self.selector.max_completion_tokens {
                request = request.with_max_completion_tokens(max);
            }
            let call =
                self.ctx
                    .complete(&*self.selector.model, request, CallKind::SpeakerSelection);
            let completion = tokio::select! {
                biased;
                () = self.cancel.cancelled() => return Selected::Stop(StopReason::Cancelled),
                r = call => match r {
                    Ok(c) => c,
                    Err(e) => return call_outcome(e),
                },
            };
            let answer = completion.message.text().unwrap_or("");
            let named = mentioned(answer, self.roster);
            if let [one] = named[..]
                && self.candidates.contains(&one)
            {
                return Selected::Speaker(one);
            }
            if attempt + 1 < self.selector.max_attempts {
                let said = Message::new(
                    Role::Assistant,
                    completion.message.source.clone(),
                    Content::Text {
                        text: Arc::from(answer),
                    },
                );
                prompt.push(said);
                prompt.push(Message::user(self.feedback(&named)));
            }
        }
        tracing::debug!(
            attempts = self.selector.max_attempts,
            "speaker selector gave no valid answer; falling back to rotation order"
        );
        match rotation_next(self.roster.len(), self.previous, self.candidates) {
            Some(c) => Selected::Speaker(c),
            None => Selected::Stop(StopReason::NoEligibleSpeaker {
                after: self
                    .previous
                    .map_or_else(String::new, |p| self.roster.name(p).to_string()),
            }),
        }
    }
}

/// What a manual answer means.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ManualAnswer {
    Pick(usize),
    GiveUp,
    Invalid,
}

pub(crate) fn manual_prompt(roster: &Roster, candidates: &[usize]) -> String {
    let mut out = String::from("Please select the next speaker from the following list:\n");
    for (i, &c) in candidates.iter().enumerate() {
        out.push_str(&format!("{}: {}\n", i + 1, roster.name(c)));
    }
    out.push_str(
        "Enter the number or name of the next speaker (press enter or q to let the chat choose):",
    );
    out
}

pub(crate) fn parse_manual(input: &str, roster: &Roster, candidates: &[usize]) -> ManualAnswer {
    let input = input.trim();
    if input.is_empty() || input.eq_ignore_ascii_case("q") {
        return ManualAnswer::GiveUp;
    }
    if let Ok(n) = input.parse::<usize>() {
        return match n.checked_sub(1).and_then(|i| candidates.get(i)) {
            Some(&c) => ManualAnswer::Pick(c),
            None => ManualAnswer::Invalid,
        };
    }
    match roster.index(input) {
        Some(c) if candidates.contains(&c) => ManualAnswer::Pick(c),
        _ => ManualAnswer::Invalid,
    }
}

/// Attempts a human gets before manual selection falls back to round robin (AG2's limit).
pub(crate) const MANUAL_ATTEMPTS: u32 = 3;

pub(crate) async fn select_manually(
    input: &dyn InputSource,
    roster: &Roster,
    candidates: &[usize],
    previous: Option<usize>,
) -> Result<usize, ChatErrorKind> {
    let prompt = manual_prompt(roster, candidates);
    for _ in 0..MANUAL_ATTEMPTS {
        let answer = input.read(&prompt).await.map_err(ChatErrorKind::Input)?;
        match parse_manual(&answer, roster, candidates) {
            ManualAnswer::Pick(c) => return Ok(c),
            ManualAnswer::GiveUp => break,
            ManualAnswer::Invalid => {}
        }
    }
    // Candidates are non-empty here (the caller stops the chat otherwise).
    Ok(rotation_next(roster.len(), previous, candidates).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roster(names: &[&str]) -> Roster {
        Roster::new(names.iter().map(|n| Arc::from(*n)).collect())
    }

    #[test]
    fn mentions_match_whole_words_and_underscore_spellings() {
        let r = roster(&["coder", "code_reviewer", "planner"]);
        assert_eq!(mentioned("coder", &r), vec![0]);
        assert_eq!(mentioned("I pick coder.", &r), vec![0]);
        assert_eq!(mentioned("encoder", &r), Vec::<usize>::new());
        assert_eq!(mentioned("code reviewer", &r), vec![1]);
        assert_eq!(mentioned("code\\_reviewer", &r), vec![1]);
        assert_eq!(mentioned("code_reviewer", &r), vec![1]);
        assert_eq!(mentioned("planner or coder", &r), vec![0, 2]);
        assert!(mentioned("", &r).is_empty());
    }

    #[test]
    fn rotation_wraps_after_previous() {
        assert_eq!(rotation_next(3, None, &[0, 1, 2]), Some(0));
        assert_eq!(rotation_next(3, Some(0), &[0, 1, 2]), Some(1));
        assert_eq!(rotation_next(3, Some(2), &[0, 1, 2]), Some(0));
        assert_eq!(rotation_next(3, Some(1), &[0, 1]), Some(0));
        assert_eq!(rotation_next(3, Some(1), &[1]), Some(1));
        assert_eq!(rotation_next(3, Some(1), &[]), None);
    }

    #[test]
    fn transitions_resolve_allowed_and_disallowed() {
        let r = roster(&["a", "b", "c"]);
        let allowed = Transitions::allowed([("a", vec!["b", "c"]), ("b", vec!["a"])]);
        assert_eq!(
            allowed.resolve(&r).unwrap(),
            vec![vec![1, 2], vec![0], vec![]]
        );
        let disallowed = Transitions::disallowed([("a", vec!["b"])]);
        assert_eq!(
            disallowed.resolve(&r).unwrap(),
            vec![vec![0, 2], vec![0, 1, 2], vec![0, 1, 2]]
        );
        let bad = Transitions::allowed([("a", vec!["zed"])]);
        assert!(matches!(
            bad.resolve(&r),
            Err(ChatConfigError::UnknownAgent { name, .. }) if name == "zed"
        ));
    }

    #[test]
    fn candidates_apply_graph_and_repeat_rule() {
        let r = roster(&["a", "b", "c"]);
        let graph = Transitions::allowed([("a", vec!["a", "b"])]);
        let rules = Rules::new(Some(&graph), AllowRepeat::Nobody, &r).unwrap();
        let mut out = Vec::new();
        rules.candidates(3, Some(0), &mut out);
        assert_eq!(out, vec![1]);
        rules.candidates(3, None, &mut out);
        assert_eq!(out, vec![0, 1, 2]);
        let rules = Rules::new(None, AllowRepeat::Only(vec![false, true, false]), &r).unwrap();
        rules.candidates(3, Some(1), &mut out);
        assert_eq!(out, vec![0, 1, 2]);
        rules.candidates(3, Some(2), &mut out);
        assert_eq!(out, vec![0, 1]);
    }

    #[test]
    fn template_fills_each_placeholder_once() {
        let filled = fill_template(
            "{roles}|{participants}|{history}|{other}",
            &[
                ("roles", "R"),
                ("participants", "P"),
                ("history", "a: {roles}"),
            ],
        );
        assert_eq!(filled, "R|P|a: {roles}|{other}");
    }

    #[test]
    fn manual_answers_by_number_or_name() {
        let r = roster(&["a", "b", "c"]);
        let cands = [1, 2];
        assert_eq!(parse_manual("1", &r, &cands), ManualAnswer::Pick(1));
        assert_eq!(parse_manual(" c ", &r, &cands), ManualAnswer::Pick(2));
        assert_eq!(parse_manual("a", &r, &cands), ManualAnswer::Invalid);
        assert_eq!(parse_manual("3", &r, &cands), ManualAnswer::Invalid);
        assert_eq!(parse_manual("0", &r, &cands), ManualAnswer::Invalid);
        assert_eq!(parse_manual("", &r, &cands), ManualAnswer::GiveUp);
        assert_eq!(parse_manual("q", &r, &cands), ManualAnswer::GiveUp);
    }

    #[test]
    fn random_is_reproducible_and_in_range() {
        let (mut a, mut b) = (7u64, 7u64);
        let xs: Vec<usize> = (0..100).map(|_| random_below(&mut a, 3)).collect();
        let ys: Vec<usize> = (0..100).map(|_| random_below(&mut b, 3)).collect();
        assert_eq!(xs, ys);
        assert!(xs.iter().all(|&x| x < 3));
        for v in 0..3 {
            assert!(xs.contains(&v), "value {v} never drawn");
        }
    }
}
