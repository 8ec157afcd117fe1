//! The graph's definition — edges, conditions, activation — and its validation at `build()`.

use std::fmt;
use std::sync::Arc;

use agent_core::{Agent, Message, Termination};

use super::flow::{GraphFlow, GraphState};
use crate::chat::caps::{Caps, Counters, TurnCap};
use crate::chat::error::ChatConfigError;
use crate::chat::session::{Session, SessionSettings, check_names, session_setters};
use crate::chat::speaker::Roster;

/// The name a graph's own calls (reflection summaries) are made under when none is set.
pub const DEFAULT_GRAPH_NAME: &str = "graph_flow";

/// When a node with several incoming edges (in one activation group) runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Activation {
    /// After **every** parent of the group has finished (a join; the default, as in AutoGen).
    #[default]
    All,
    /// After the **first** parent of the group finishes; parents finishing while it is already
    /// queued do not queue it again.
    Any,
}

type EdgePredicate = Arc<dyn Fn(&Message) -> bool + Send + Sync>;

#[derive(Clone)]
pub(crate) enum Condition {
    Contains(Arc<str>),
    When(EdgePredicate),
}

impl Condition {
    /// Whether the edge fires on `message`, the last message of its source's reply.
    pub(crate) fn holds(&self, message: &Message) -> bool {
        match self {
            Condition::Contains(text) => message.text().is_some_and(|t| t.contains(&**text)),
            Condition::When(f) => f(message),
        }
    }
}

/// An edge of a [`GraphFlow`]: after `from` replies, `to` is activated — always, or only when the
/// condition holds on the last message of `from`'s reply.
///
/// ```
/// use agent_runtime::chat::graph::Edge;
///
/// let back = Edge::new("reviewer", "writer").when_contains("REVISE").group("revise_loop");
/// let done = Edge::new("reviewer", "publisher").when(|m| m.text() == Some("APPROVE"));
/// # let _ = (back, done);
/// ```
#[derive(Clone)]
#[must_use]
pub struct Edge {
    pub(crate) from: String,
    pub(crate) to: String,
    pub(crate) condition: Option<Condition>,
    pub(crate) group: Option<String>,
}

impl fmt::Debug for Edge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let condition = match &self.condition {
            None => "always".to_owned(),
            Some(Condition::Contains(t)) => format!("contains {t:?}"),
            Some(Condition::When(_)) => "function".to_owned(),
        };
        f.debug_struct("Edge")
            .field("from", &self.from)
            .field("to", &self.to)
            .field("condition", &condition)
            .field("group", &self.group)
            .finish()
    }
}

impl Edge {
    /// An unconditional edge.
    pub fn new(from: impl Into<String>, to: impl Into<String>) -> Self {
        Self {
            from: from.into(),
            to: to.into(),
            condition: None,
            group: None,
        }
    }

    /// Fires only when the last message of `from`'s reply contains `text` (AutoGen's string
    /// condition).
    pub fn when_contains(mut self, text: impl Into<Arc<str>>) -> Self {
        self.condition = Some(Condition::Contains(text.into()));
        self
    }

    /// Fires only when `f` holds on the last message of `from`'s reply.
    pub fn when(mut self, f: impl Fn(&Message) -> bool + Send + Sync + 'static) -> Self {
        self.condition = Some(Condition::When(Arc::new(f)));
        self
    }

    /// The activation group at the target (default: the target's name). A join waits for the
    /// parents of one group only; give a loop's back edge its own group so that it alone
    /// re-activates the node (AutoGen's `activation_group`).
    pub fn group(mut self, name: impl Into<String>) -> Self {
        self.group = Some(name.into());
        self
    }
}

/// Builds a [`GraphFlow`]; the graph is validated at [`build`](Self::build).
#[must_use = "a builder does nothing until build() is called"]
pub struct GraphFlowBuilder {
    name: Option<String>,
    agents: Vec<Arc<dyn Agent>>,
    edges: Vec<Edge>,
    activation: Vec<(String, Activation)>,
    start: Vec<String>,
    termination: Option<Box<dyn Termination>>,
    max_turns: Option<u32>,
    settings: SessionSettings,
}

impl fmt::Debug for GraphFlowBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GraphFlowBuilder")
            .field(
                "participants",
                &self.agents.iter().map(|a| a.name()).collect::<Vec<_>>(),
            )
            .field("edges", &self.edges)
            .field("start", &self.start)
            .finish_non_exhaustive()
    }
}

impl GraphFlowBuilder {
    pub(crate) fn new() -> Self {
        Self {
            name: None,
            agents: Vec::new(),
            edges: Vec::new(),
            activation: Vec::new(),
            start: Vec::new(),
            termination: None,
            max_turns: None,
            settings: SessionSettings::default(),
        }
    }

    /// Adds a node (an `Arc<dyn Agent>` works too). Its name is the node's name.
    pub fn participant(mut self, agent: impl Agent + 'static) -> Self {
        self.agents.push(Arc::new(agent));
        self
    }

    /// Adds several nodes, in order.
    pub fn participants<A: Agent + 'static>(mut self, agents: impl IntoIterator<Item = A>) -> Self {
        self.agents
            .extend(agents.into_iter().map(|a| Arc::new(a) as Arc<dyn Agent>));
        self
    }

    /// Adds an unconditional edge `from → to`.
    pub fn edge(self, from: impl Into<String>, to: impl Into<String>) -> Self {
        self.add_edge(Edge::new(from, to))
    }

    /// Adds an edge (conditional, or with its own activation group).
    pub fn add_edge(mut self, edge: Edge) -> Self {
        self.edges.push(edge);
        self
    }

    /// How `node` joins its parents (default [`Activation::All`]).
    pub fn activation(mut self, node: impl Into<String>, activation: Activation) -> Self {
        self.activation.push((node.into(), activation));
        self
    }

    /// Starts the graph at `node` (may be called several times). Without it, the graph starts at
    /// every node with no incoming edge (AutoGen's `default_start_node` / start nodes).
    pub fn start(mut self, node: impl Into<String>) -> Self {
        self.start.push(node.into());
        self
    }

    /// A termination condition, checked with the task messages and after each reply.
    pub fn termination(mut self, condition: impl Termination + 'static) -> Self {
        self.termination = Some(Box::new(condition));
        self
    }

    /// Stops after this many agent replies (every branch's reply counts).
    pub fn max_turns(mut self, max: u32) -> Self {
        self.max_turns = Some(max);
        self
    }

    /// The graph's own name (default [`DEFAULT_GRAPH_NAME`]); must differ from every node's.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    session_setters!("graph");

    /// Validates the graph and builds it.
    ///
    /// # Errors
    /// No participant, duplicate names, a node named like the graph, an edge, activation or start
    /// naming a non-participant, a duplicate edge, a node with both conditional and unconditional
    /// edges, no start node, no leaf node, a cycle with no conditional edge, or `max_turns(0)`.
    pub fn build(self) -> Result<GraphFlow, ChatConfigError> {
        let (names, name) = check_names(&self.agents, self.name.as_deref(), DEFAULT_GRAPH_NAME)?;
        if self.max_turns == Some(0) {
            return Err(ChatConfigError::Zero { what: "max_turns" });
        }
        let roster = Roster::new(names.clone());
        let topology = Topology::resolve(&roster, &self.edges, &self.activation, &self.start)?;
        let n = roster.len();
        let caps = Caps {
            max_turns: self.max_turns.map(|max| TurnCap {
                replies: max,
                reported: max,
            }),
            max_messages: None,
            auto_reply: vec![None; n],
            predicate: None,
        };
        let session = Session::new(name, "graph", names, self.settings);
        Ok(GraphFlow {
            session,
            agents: self.agents,
            topology,
            termination: self.termination,
            caps,
            messages: Vec::new(),
            counters: Counters {
                consecutive: vec![0; n],
                ..Counters::default()
            },
            state: GraphState::default(),
        })
    }
}

/// One outgoing edge, resolved to indices.
#[derive(Clone)]
pub(crate) struct OutEdge {
    pub(crate) target: usize,
    pub(crate) group: usize,
    pub(crate) condition: Option<Condition>,
}

/// An activation group: a target and the parents that must (or may) finish before it runs.
#[derive(Debug, Clone)]
pub(crate) struct Group {
    pub(crate) target: usize,
    pub(crate) parents: usize,
    pub(crate) activation: Activation,
}

/// The validated graph, by participant index.
#[derive(Clone)]
pub(crate) struct Topology {
    pub(crate) out: Vec<Vec<OutEdge>>,
    pub(crate) groups: Vec<Group>,
    /// The groups each node is the target of (their "any" latch clears when it runs).
    pub(crate) groups_of: Vec<Vec<usize>>,
    pub(crate) start: Vec<usize>,
}

impl Topology {
    fn resolve(
        roster: &Roster,
        edges: &[Edge],
        activation: &[(String, Activation)],
        start: &[String],
    ) -> Result<Self, ChatConfigError> {
        let n = roster.len();
        let mut kinds = vec![Activation::All; n];
        for (node, a) in activation {
            kinds[roster.require("graph activation", node)?] = *a;
        }
        let mut out: Vec<Vec<OutEdge>> = vec![Vec::new(); n];
        let mut group_keys: Vec<(usize, String)> = Vec::new();
        let mut groups: Vec<Group> = Vec::new();
        let mut has_incoming = vec![false; n];
        for edge in edges {
            let from = roster.require("graph edge", &edge.from)?;
            let to = roster.require("graph edge", &edge.to)?;
            if out[from].iter().any(|e| e.target == to) {
                return Err(ChatConfigError::GraphDuplicateEdge {
                    from: edge.from.clone(),
                    to: edge.to.clone(),
                });
            }
            let key = (to, edge.group.clone().unwrap_or_else(|| edge.to.clone()));
            let group = match group_keys.iter().position(|k| *k == key) {
                Some(g) => g,
                None => {
                    group_keys.push(key);
                    groups.push(Group {
                        target: to,
                        parents: 0,
                        activation: kinds[to],
                    });
                    groups.len() - 1
                }
            };
            groups[group].parents += 1;
            has_incoming[to] = true;
            out[from].push(OutEdge {
                target: to,
                group,
                condition: edge.condition.clone(),
            });
        }
        for (i, edges) in out.iter().enumerate() {
            let conditional = edges.iter().filter(|e| e.condition.is_some()).count();
            if conditional != 0 && conditional != edges.len() {
                return Err(ChatConfigError::GraphMixedEdges {
                    node: roster.name(i).to_string(),
                });
            }
        }
        let start: Vec<usize> = if start.is_empty() {
            (0..n).filter(|&i| !has_incoming[i]).collect()
        } else {
            let mut picked = Vec::new();
            for s in start {
                let i = roster.require("graph start", s)?;
                if !picked.contains(&i) {
                    picked.push(i);
                }
            }
            picked.sort_unstable();
            picked
        };
        if start.is_empty() {
            return Err(ChatConfigError::GraphNoStart);
        }
        if out.iter().all(|e| !e.is_empty()) {
            return Err(ChatConfigError::GraphNoLeaf);
        }
        if let Some(cycle) = unconditional_cycle(&out) {
            return Err(ChatConfigError::GraphCycleWithoutExit {
                cycle: cycle.iter().map(|&i| roster.name(i).to_string()).collect(),
            });
        }
        let mut groups_of = vec![Vec::new(); n];
        for (g, group) in groups.iter().enumerate() {
            groups_of[group.target].push(g);
        }
        Ok(Self {
            out,
            groups,
            groups_of,
            start,
        })
    }
}

/// A cycle made only of unconditional edges (which, once entered, nothing could leave), as a
/// path whose first node is repeated at the end. Every cycle with at least one conditional edge
/// has an exit condition, so such a cycle exists exactly when the unconditional subgraph has one.
fn unconditional_cycle(out: &[Vec<OutEdge>]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let n = out.len();
    let mut mark = vec![Mark::New; n];
    for root in 0..n {
        if mark[root] != Mark::New {
            continue;
        }
        // Iterative DFS: (node, next edge index) frames, the path in `path`.
        let mut stack = vec![(root, 0usize)];
        let mut path = vec![root];
        mark[root] = Mark::OnPath;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            let edge = out[node][*next..]
                .iter()
                .position(|e| e.condition.is_none())
                .map(|offset| *next + offset);
            match edge {
                Some(e) => {
                    *next = e + 1;
                    let to = out[node][e].target;
                    match mark[to] {
                        Mark::OnPath => {
                            let at = path.iter().position(|&p| p == to).unwrap_or(0);
                            let mut cycle = path[at..].to_vec();
                            cycle.push(to);
                            return Some(cycle);
                        }
                        Mark::New => {
                            mark[to] = Mark::OnPath;
                            stack.push((to, 0));
                            path.push(to);
                        }
                        Mark::Done => {}
                    }
                }
                None => {
                    mark[node] = Mark::Done;
                    stack.pop();
                    path.pop();
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roster(names: &[&str]) -> Roster {
        Roster::new(names.iter().map(|n| Arc::from(*n)).collect())
    }

    fn resolve(names: &[&str], edges: &[Edge]) -> Result<Topology, ChatConfigError> {
        Topology::resolve(&roster(names), edges, &[], &[])
    }

    #[test]
    fn a_cycle_without_a_conditional_edge_is_named() {
        let err = resolve(
            &["A", "B", "C", "D", "E"],
            &[
                Edge::new("A", "B"),
                Edge::new("B", "C"),
                Edge::new("C", "A"),
                Edge::new("D", "E"),
            ],
        )
        .err();
        // AutoGen: "Cycle detected without exit condition: A -> B -> C -> A". (D is the start.)
        assert_eq!(
            err,
            Some(ChatConfigError::GraphCycleWithoutExit {
                cycle: vec!["A".into(), "B".into(), "C".into(), "A".into()],
            })
        );
    }

    #[test]
    fn a_cycle_with_a_conditional_edge_passes() {
        let t = Topology::resolve(
            &roster(&["A", "B", "C"]),
            &[
                Edge::new("A", "B"),
                Edge::new("B", "C").when_contains("exit"),
                Edge::new("B", "A").when_contains("loop"),
            ],
            &[],
            &["A".to_owned()],
        )
        .unwrap();
        assert_eq!(t.start, vec![0]);
        assert_eq!(t.groups.len(), 3);
    }

    #[test]
    fn structural_errors_are_typed() {
        let e = |names: &[&str], edges: &[Edge]| resolve(names, edges).err();
        assert_eq!(
            e(&["A", "B"], &[Edge::new("A", "B"), Edge::new("B", "A")]),
            Some(ChatConfigError::GraphNoStart)
        );
        assert_eq!(
            e(
                &["A", "B", "C"],
                &[
                    Edge::new("A", "B"),
                    Edge::new("B", "C"),
                    Edge::new("C", "B").when_contains("x")
                ]
            ),
            Some(ChatConfigError::GraphNoLeaf)
        );
        assert_eq!(
            e(
                &["A", "B", "C"],
                &[
                    Edge::new("A", "B").when_contains("cond"),
                    Edge::new("A", "C")
                ]
            ),
            Some(ChatConfigError::GraphMixedEdges { node: "A".into() })
        );
        assert!(matches!(
            e(&["A"], &[Edge::new("A", "Z")]),
            Some(ChatConfigError::UnknownAgent { name, .. }) if name == "Z"
        ));
        assert_eq!(
            e(&["A", "B"], &[Edge::new("A", "B"), Edge::new("A", "B")]),
            Some(ChatConfigError::GraphDuplicateEdge {
                from: "A".into(),
                to: "B".into()
            })
        );
    }

    #[test]
    fn groups_count_parents_per_target_and_group() {
        let t = resolve(
            &["A", "B", "C", "D"],
            &[
                Edge::new("A", "B"),
                Edge::new("A", "C"),
                Edge::new("B", "D"),
                Edge::new("C", "D"),
            ],
        )
        .unwrap();
        let d = t.groups.iter().find(|g| g.target == 3).unwrap();
        assert_eq!(d.parents, 2);
        assert_eq!(t.start, vec![0]);
    }
}
