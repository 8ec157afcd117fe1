//! The orchestrator's ledgers: the prompts that build the task ledger (facts and plan) and ask for
//! the progress ledger, and the progress ledger's JSON.

use serde::Deserialize;

pub(crate) const FACTS_PROMPT: &str = "Below I will present you a request. Before we begin addressing the request, please answer the following pre-survey to the best of your ability. Keep in mind that you are Ken Jennings-level with trivia, and Mensa-level with puzzles, so there should be a deep well to draw from.

Here is the request:

{task}

Here is the pre-survey:

    1. Please list any specific facts or figures that are GIVEN in the request itself.
    2. Please list any facts that may need to be looked up, and WHERE SPECIFICALLY they might be found.
    3. Please list any facts that may need to be derived (e.g., via logical deduction, simulation, or computation).
    4. Please list any facts that are recalled from memory, hunches, well-reasoned guesses, etc.

Your answer should use headings:

    1. GIVEN OR VERIFIED FACTS
    2. FACTS TO LOOK UP
    3. FACTS TO DERIVE
    4. EDUCATED GUESSES

DO NOT include any other headings or sections in your response. DO NOT list next steps or plans until asked to do so.";

pub(crate) const PLAN_PROMPT: &str = "Fantastic. To address this request we have assembled the following team:

{team}

Based on the team composition, and known and unknown facts, please devise a short bullet-point plan for addressing the original request. Remember, there is no requirement to involve all team members -- a team member's particular expertise may not be needed for this task.";

pub(crate) const LEDGER_MESSAGE: &str = "
We are working to address the following user request:

{task}


To answer this request we have assembled the following team:

{team}


Here is an initial fact sheet to consider:

{facts}


Here is the plan to follow as best as possible:

{plan}
";

pub(crate) const PROGRESS_PROMPT: &str = "
Recall we are working on the following request:

{task}

And we have assembled the following team:

{team}

To make progress on the request, please answer the following questions, including necessary reasoning:

    - Is the request fully satisfied? (True if complete, or False if the original request has yet to be SUCCESSFULLY and FULLY addressed)
    - Are we in a loop where we are repeating the same requests and / or getting the same responses as before? Loops can span multiple turns, and can include repeated actions like scrolling up or down more than a handful of times.
    - Are we making forward progress? (True if just starting, or recent messages are adding value. False if recent messages show evidence of being stuck in a loop or if there is evidence of significant barriers to success such as the inability to read from a required file)
    - Who should speak next? (select from: {names})
    - What instruction or question would you give this team member? (Phrase as if speaking directly to them, and include any specific information they may need)

Please output an answer in pure JSON format according to the following schema. The JSON object must be parsable as-is. DO NOT OUTPUT ANYTHING OTHER THAN JSON, AND DO NOT DEVIATE FROM THIS SCHEMA:

    {
        \"is_request_satisfied\": {\"reason\": string, \"answer\": boolean},
        \"is_in_loop\": {\"reason\": string, \"answer\": boolean},
        \"is_progress_being_made\": {\"reason\": string, \"answer\": boolean},
        \"next_speaker\": {\"reason\": string, \"answer\": string (select from: {names})},
        \"instruction_or_question\": {\"reason\": string, \"answer\": string}
    }
";

pub(crate) const FACTS_UPDATE_PROMPT: &str = "As a reminder, we are working to solve the following task:

{task}

It's clear we aren't making as much progress as we would like, but we may have learned something new. Please rewrite the following fact sheet, updating it to include anything new we have learned that may be helpful. Example edits can include (but are not limited to) adding new guesses, moving educated guesses to verified facts if appropriate, etc. Updates may be made to any section of the fact sheet, and more than one section of the fact sheet can be edited. This is an especially good time to update educated guesses, so please at least add or update one educated guess or hunch, and explain your reasoning.

Here is the old fact sheet:

{facts}";

pub(crate) const PLAN_UPDATE_PROMPT: &str = "Please briefly explain what went wrong on this last run (the root cause of the failure), and then come up with a new plan that takes steps and/or includes hints to overcome prior challenges and especially avoids repeating the same mistakes. As before, the new plan should be concise, be expressed in bullet-point form, and consider the following team composition (do not involve any other outside people since we cannot contact anyone else):

{team}";

pub(crate) const FINAL_ANSWER_PROMPT: &str = "We are working on the following task:
{task}

We have completed the task.

The above messages contain the conversation that took place to complete the task.

Based on the information gathered, provide the final answer to the original request.
The answer should be phrased as if you were speaking to the user.
";

/// One judged question of the progress ledger.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub(crate) struct Judged<T> {
    pub(crate) answer: T,
    #[serde(default)]
    pub(crate) reason: String,
}

/// The progress ledger the orchestrator's model answers with each round. When the request is
/// satisfied the other questions may be left out (nothing more will be asked of the team).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub(crate) struct ProgressLedger {
    pub(crate) is_request_satisfied: Judged<bool>,
    #[serde(default)]
    pub(crate) is_in_loop: Option<Judged<bool>>,
    #[serde(default)]
    pub(crate) is_progress_being_made: Option<Judged<bool>>,
    #[serde(default)]
    pub(crate) next_speaker: Option<Judged<String>>,
    #[serde(default)]
    pub(crate) instruction_or_question: Option<Judged<String>>,
}

/// What the orchestrator does after reading a progress ledger.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Verdict {
    /// The request is satisfied, for this reason.
    Done(String),
    /// Continue: `stalled` when no progress was made or the team is looping.
    Next {
        speaker: String,
        instruction: String,
        stalled: bool,
    },
}

/// Reads a progress ledger from a model's answer: the outermost `{…}` (models wrap JSON in code
/// fences or prose), every question answered unless the request is satisfied, and a next speaker
/// among `names`. The error says what to fix, and is sent back to the model on a retry.
pub(crate) fn read_progress(answer: &str, names: &[&str]) -> Result<Verdict, String> {
    let json = match (answer.find('{'), answer.rfind('}')) {
        (Some(open), Some(close)) if open < close => &answer[open..=close],
        _ => return Err("the answer holds no JSON object".to_owned()),
    };
    let ledger: ProgressLedger =
        serde_json::from_str(json).map_err(|e| format!("the JSON does not fit the schema: {e}"))?;
    if ledger.is_request_satisfied.answer {
        return Ok(Verdict::Done(ledger.is_request_satisfied.reason));
    }
    let missing = |key: &str| format!("the JSON lacks \"{key}\"");
    let in_loop = ledger.is_in_loop.ok_or_else(|| missing("is_in_loop"))?;
    let progress = ledger
        .is_progress_being_made
        .ok_or_else(|| missing("is_progress_being_made"))?;
    let speaker = ledger.next_speaker.ok_or_else(|| missing("next_speaker"))?;
    let instruction = ledger
        .instruction_or_question
        .ok_or_else(|| missing("instruction_or_question"))?;
    if !names.contains(&speaker.answer.as_str()) {
        return Err(format!(
            "next_speaker '{}' is not a team member; select from: {}",
            speaker.answer,
            names.join(", ")
        ));
    }
    Ok(Verdict::Next {
        speaker: speaker.answer,
        instruction: instruction.answer,
        stalled: !progress.answer || in_loop.answer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger(satisfied: bool, progress: bool, in_loop: bool, next: &str) -> String {
        serde_json::json!({
            "is_request_satisfied": {"answer": satisfied, "reason": "r1"},
            "is_progress_being_made": {"answer": progress, "reason": "r2"},
            "is_in_loop": {"answer": in_loop, "reason": "r3"},
            "instruction_or_question": {"answer": "do it", "reason": "r4"},
            "next_speaker": {"answer": next, "reason": "r5"},
        })
        .to_string()
    }

    #[test]
    fn reads_done_next_and_stalls() {
        let names = ["a", "b"];
        assert_eq!(
            read_progress(&ledger(true, true, false, "a"), &names),
            Ok(Verdict::Done("r1".into()))
        );
        assert_eq!(
            read_progress(&ledger(false, true, false, "b"), &names),
            Ok(Verdict::Next {
                speaker: "b".into(),
                instruction: "do it".into(),
                stalled: false
            })
        );
        for (progress, in_loop) in [(false, false), (true, true), (false, true)] {
            assert!(matches!(
                read_progress(&ledger(false, progress, in_loop, "a"), &names),
                Ok(Verdict::Next { stalled: true, .. })
            ));
        }
    }

    #[test]
    fn fenced_json_is_read_and_bad_answers_say_why() {
        let names = ["a"];
        let fenced = format!("```json\n{}\n```", ledger(false, true, false, "a"));
        assert!(read_progress(&fenced, &names).is_ok());
        assert_eq!(
            read_progress("no idea", &names),
            Err("the answer holds no JSON object".into())
        );
        let stranger = read_progress(&ledger(false, true, false, "zed"), &names).unwrap_err();
        assert!(stranger.contains("'zed'"), "{stranger}");
        let partial = r#"{"is_request_satisfied": {"answer": false, "reason": ""}}"#;
        assert_eq!(
            read_progress(partial, &names),
            Err("the JSON lacks \"is_in_loop\"".into())
        );
        // Satisfied alone is enough.
        let done = r#"{"is_request_satisfied": {"answer": true, "reason": "ok"}}"#;
        assert_eq!(read_progress(done, &names), Ok(Verdict::Done("ok".into())));
    }
}
