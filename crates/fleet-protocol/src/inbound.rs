//! Agents' messages (inbound): decoding, size checks and validation.
//!
//! Decoding is strict: every inbound message is size-checked, parsed and
//! validated before it can touch Redis, and a refusal carries a
//! [`Rejection`] reason that ends up in a metric and a log line.

use crate::pool::{AgentStatus, PoolType};
use crate::VERSION;
use serde::{Deserialize, Serialize};

/// Longest accepted agent id.
pub const MAX_AGENT_ID_LEN: usize = 128;
/// Most capabilities one agent may declare, and the longest one.
pub const MAX_CAPABILITIES: usize = 32;
pub const MAX_CAPABILITY_LEN: usize = 64;
/// Longest message id (correlation id).
pub const MAX_MSG_ID_LEN: usize = 128;
/// How deeply a message (payloads and results included) may nest arrays and
/// objects: deeper is refused at the edge (`too_deep`), over pub/sub and
/// HTTP alike, before any parser recurses into it (an agent's JSON parser
/// may fail on what it cannot recurse into: Python's raises RecursionError).
pub const MAX_JSON_DEPTH: usize = 64;
/// The highest priority an agent registers with (1..=10).
pub const MAX_PRIORITY: u8 = 10;
/// The most tasks an agent takes at once (1..=64).
pub const MAX_CAPACITY: u32 = 64;

/// How deeply `json` nests arrays and objects (0 for a scalar), read as
/// bytes without parsing: brackets inside strings do not count. Stops
/// counting past `MAX_JSON_DEPTH + 1`.
pub fn json_depth(json: &[u8]) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in json {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
                if max > MAX_JSON_DEPTH {
                    return max;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Declared resource use of an agent (memory MB, CPU cores, network Mbps).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default)]
    pub memory: f64,
    #[serde(default)]
    pub cpu: f64,
    #[serde(default)]
    pub network: f64,
}

/// `resources` as an object only (serde would also take `[]` for a struct).
fn resources_object<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Resources, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    if !v.is_object() {
        return Err(serde::de::Error::custom(
            "expected an object {memory, cpu, network}",
        ));
    }
    serde_json::from_value(v).map_err(serde::de::Error::custom)
}

/// As [`resources_object`], for a field that may be absent (or null).
fn opt_resources_object<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Resources>, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Null => Ok(None),
        v => resources_object(v)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

/// `register` on the registry channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Register {
    /// Message id; echoed as `replyTo` in the reply.
    pub id: String,
    pub agent_id: String,
    /// Pool name; validated by the commander (an unknown pool is refused with a reply).
    pub pool: String,
    /// Agent type; defaults to the pool name.
    #[serde(default, rename = "agentType", skip_serializing_if = "Option::is_none")]
    pub agent_type: Option<String>,
    #[serde(
        default,
        deserialize_with = "crate::lenient::opt_u8",
        skip_serializing_if = "Option::is_none"
    )]
    pub priority: Option<u8>,
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default, deserialize_with = "resources_object")]
    pub resources: Resources,
    /// Tasks the agent takes at once (1..=64, default 1).
    #[serde(
        default,
        deserialize_with = "crate::lenient::opt_u32",
        skip_serializing_if = "Option::is_none"
    )]
    pub capacity: Option<u32>,
    /// Identifies this run of the agent process. Registering again with
    /// another instance tells the commander the agent restarted, so the tasks
    /// it held are given to others at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// The agent's X25519 public key (base64, 32 bytes), offering a session:
    /// a commander that takes it answers with its own, and both may MAC
    /// what they send next (`FS1`) instead of signing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_key: Option<String>,
}

/// `deregister` on the registry channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deregister {
    pub id: String,
    pub agent_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `heartbeat` on the health channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Heartbeat {
    pub agent_id: String,
    /// What the agent is doing: idle, active or busy.
    pub status: AgentStatus,
    /// Fraction of capacity in use, 0..=1.
    #[serde(default)]
    pub load: f64,
    /// Current use; when absent, what the agent declared at registration stays.
    #[serde(
        default,
        deserialize_with = "opt_resources_object",
        skip_serializing_if = "Option::is_none"
    )]
    pub resources: Option<Resources>,
    /// Optional sequence number, for the agent's own bookkeeping.
    #[serde(
        default,
        deserialize_with = "crate::lenient::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub seq: Option<u64>,
}

/// `status_request` on the fleet channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusRequest {
    pub id: String,
}

/// `task_submit` on the tasks channel. Decoded in two reads of the same
/// bytes (the head here, then the [`Submission`](crate::task::Submission)),
/// because serde's `flatten` cannot keep a payload's raw bytes.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskSubmit {
    /// Message id; echoed as `replyTo`.
    pub id: String,
    /// Where to send the reply; must be under `swarm:phase-1:reply:`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_channel: Option<String>,
    #[serde(flatten)]
    pub task: crate::task::Submission,
}

/// What an agent reports about a task attempt, on the results channel:
/// `task_ack`, `task_progress`, `task_complete`, `task_fail`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskReport {
    pub task_id: String,
    #[serde(deserialize_with = "crate::lenient::u32")]
    pub attempt: u32,
    pub agent_id: String,
    /// `task_progress`: 0..=1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<f64>,
    /// `task_progress`: the step the agent is on, rising with each step.
    /// A report whose step is not above the last one is not progress (an
    /// agent looping on one step), however often it comes.
    #[serde(
        default,
        deserialize_with = "crate::lenient::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub step: Option<u64>,
    /// `task_complete` / `task_fail`: what the attempt consumed, in the
    /// fleet's budget unit (`[budgets] unit`), debited from the agent's budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<f64>,
    /// `task_complete`: any JSON, kept byte for byte.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<crate::task::RawJson>,
    /// `task_fail`: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The kind of a [`TaskReport`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportKind {
    Ack,
    Progress,
    Complete,
    Fail,
}

impl ReportKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReportKind::Ack => "task_ack",
            ReportKind::Progress => "task_progress",
            ReportKind::Complete => "task_complete",
            ReportKind::Fail => "task_fail",
        }
    }
}

/// A validated message from an agent (or an operator tool) to the commander.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    Register(Register),
    Deregister(Deregister),
    Heartbeat(Heartbeat),
    StatusRequest(StatusRequest),
    TaskSubmit(TaskSubmit),
    Report(ReportKind, TaskReport),
    /// A validator's signed vote on a proposal.
    Vote(crate::governance::Vote),
    /// A request whose fields do not parse (a mistyped field) but whose
    /// sender can be answered: it gets `invalid_fields` with the detail.
    Misfit(Misfit),
}

/// A `register` or `task_submit` with a readable `id` (and `agentId`, or
/// `replyChannel`) whose other fields do not parse.
#[derive(Debug, Clone, PartialEq)]
pub enum Misfit {
    Register {
        id: String,
        agent_id: String,
        detail: String,
    },
    TaskSubmit {
        id: String,
        reply_channel: Option<String>,
        detail: String,
    },
}

impl Inbound {
    /// The agent the message is about, if any (used to keep per-agent order).
    pub fn agent_id(&self) -> Option<&str> {
        match self {
            Inbound::Register(m) => Some(&m.agent_id),
            Inbound::Deregister(m) => Some(&m.agent_id),
            Inbound::Heartbeat(m) => Some(&m.agent_id),
            Inbound::Report(_, m) => Some(&m.agent_id),
            Inbound::Vote(m) => Some(&m.agent_id),
            Inbound::Misfit(Misfit::Register { agent_id, .. }) => Some(agent_id),
            Inbound::StatusRequest(_) | Inbound::TaskSubmit(_) | Inbound::Misfit(_) => None,
        }
    }

    /// The task the message is about, if any (for the log span).
    pub fn task_id(&self) -> Option<&str> {
        match self {
            Inbound::Report(_, m) => Some(&m.task_id),
            _ => None,
        }
    }

    /// The message type, as on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            Inbound::Register(_) => "register",
            Inbound::Deregister(_) => "deregister",
            Inbound::Heartbeat(_) => "heartbeat",
            Inbound::StatusRequest(_) => "status_request",
            Inbound::TaskSubmit(_) => "task_submit",
            Inbound::Report(k, _) => k.as_str(),
            Inbound::Vote(_) => "vote",
            Inbound::Misfit(Misfit::Register { .. }) => "register",
            Inbound::Misfit(Misfit::TaskSubmit { .. }) => "task_submit",
        }
    }
}

/// The channels the commander listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Registry,
    Health,
    Fleet,
    Tasks,
    Results,
    Governance,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Registry => "registry",
            Channel::Health => "health",
            Channel::Fleet => "fleet",
            Channel::Tasks => "tasks",
            Channel::Results => "results",
            Channel::Governance => "governance",
        }
    }
}

/// Why an inbound message was refused. The string form is the metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("oversized: {0} bytes")]
    Oversized(usize),
    #[error("bad_json: {0}")]
    BadJson(String),
    #[error("unsupported_version: {0}")]
    UnsupportedVersion(u64),
    #[error("unknown_type: {0}")]
    UnknownType(String),
    #[error("wrong_channel: {0} is not accepted here")]
    WrongChannel(String),
    #[error("invalid_fields: {0}")]
    InvalidField(String),
    #[error("too_deep: arrays and objects nested deeper than {MAX_JSON_DEPTH}")]
    TooDeep,
}

impl Rejection {
    /// Metric label: a small fixed set.
    pub fn label(&self) -> &'static str {
        match self {
            Rejection::Oversized(_) => "oversized",
            Rejection::BadJson(_) => "bad_json",
            Rejection::UnsupportedVersion(_) => "unsupported_version",
            Rejection::UnknownType(_) => "unknown_type",
            Rejection::WrongChannel(_) => "wrong_channel",
            Rejection::InvalidField(_) => "invalid_fields",
            Rejection::TooDeep => "too_deep",
        }
    }
}

/// What decoding one pub/sub payload gave.
#[derive(Debug, PartialEq)]
// Returned once per payload and unwrapped at once: boxing the message would
// cost an allocation per message to save a move of ~200 bytes.
#[allow(clippy::large_enum_variant)]
pub enum Decoded {
    Message(Inbound),
    /// A message the commander itself publishes on a channel it also listens
    /// on (events, status): not for it, not an error.
    Own,
}

#[derive(Deserialize)]
struct Envelope {
    v: Option<u64>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// Types the commander publishes on channels it also subscribes to.
const OWN_TYPES: &[&str] = &[
    "agent_registered",
    "agent_deregistered",
    "agent_failed",
    "agent_recovering",
    "agent_recovered",
    "agent_removed",
    "agent_quarantined",
    "agent_probation",
    "agent_stuck",
    "agent_halted",
    "agent_resumed",
    "fleet_status",
    "commander_took_over",
];

/// Size-checks, parses and validates one payload received on `channel`.
pub fn decode(channel: Channel, payload: &[u8], max_bytes: usize) -> Result<Decoded, Rejection> {
    if payload.len() > max_bytes {
        return Err(Rejection::Oversized(payload.len()));
    }
    if json_depth(payload) > MAX_JSON_DEPTH {
        return Err(Rejection::TooDeep);
    }
    let env: Envelope =
        serde_json::from_slice(payload).map_err(|e| Rejection::BadJson(e.to_string()))?;
    let kind = env
        .kind
        .ok_or_else(|| Rejection::InvalidField("type: missing".into()))?;
    match env.v {
        Some(v) if v == u64::from(VERSION) => {}
        Some(v) => return Err(Rejection::UnsupportedVersion(v)),
        None => return Err(Rejection::InvalidField("v: missing".into())),
    }
    let msg = match (channel, kind.as_str()) {
        (Channel::Registry, "register") => match parse(payload) {
            Ok(r) => Inbound::Register(r),
            Err(e) => return misfit(payload, e, true),
        },
        (Channel::Registry, "deregister") => Inbound::Deregister(parse(payload)?),
        (Channel::Health, "heartbeat") => Inbound::Heartbeat(parse(payload)?),
        (Channel::Fleet, "status_request") => Inbound::StatusRequest(parse(payload)?),
        (Channel::Tasks, "task_submit") => match submission(payload) {
            Ok(t) => Inbound::TaskSubmit(t),
            Err(e) => return misfit(payload, e, false),
        },
        (Channel::Results, "task_ack") => Inbound::Report(ReportKind::Ack, parse(payload)?),
        (Channel::Results, "task_progress") => {
            Inbound::Report(ReportKind::Progress, parse(payload)?)
        }
        (Channel::Results, "task_complete") => {
            Inbound::Report(ReportKind::Complete, parse(payload)?)
        }
        (Channel::Results, "task_fail") => Inbound::Report(ReportKind::Fail, parse(payload)?),
        (Channel::Governance, "vote") => Inbound::Vote(parse(payload)?),
        // The commander's own announcements on the governance channel.
        (Channel::Governance, "proposal" | "decision") => return Ok(Decoded::Own),
        (_, k) if OWN_TYPES.contains(&k) => return Ok(Decoded::Own),
        (
            _,
            "register" | "deregister" | "heartbeat" | "status_request" | "task_submit" | "task_ack"
            | "task_progress" | "task_complete" | "task_fail" | "vote",
        ) => return Err(Rejection::WrongChannel(kind)),
        _ => return Err(Rejection::UnknownType(truncate(&kind, 64))),
    };
    validate(&msg)?;
    Ok(Decoded::Message(msg))
}

/// A request that does not parse is still answered when its sender can be
/// named safely; otherwise it is refused unanswered.
fn misfit(payload: &[u8], e: Rejection, register: bool) -> Result<Decoded, Rejection> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Ids {
        id: String,
        agent_id: Option<String>,
        reply_channel: Option<String>,
    }
    let Ok(ids) = serde_json::from_slice::<Ids>(payload) else {
        return Err(e);
    };
    check_msg_id(&ids.id).map_err(|_| e.clone())?;
    let detail = match &e {
        Rejection::InvalidField(d) => truncate(d, 200),
        other => other.to_string(),
    };
    let m = if register {
        match ids.agent_id {
            Some(agent_id) if valid_agent_id(&agent_id) => Misfit::Register {
                id: ids.id,
                agent_id,
                detail,
            },
            _ => return Err(e),
        }
    } else {
        Misfit::TaskSubmit {
            id: ids.id,
            reply_channel: ids.reply_channel,
            detail,
        }
    };
    Ok(Decoded::Message(Inbound::Misfit(m)))
}

/// `task_submit`: its head, then its submission, from the same bytes.
fn submission(payload: &[u8]) -> Result<TaskSubmit, Rejection> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Head {
        id: String,
        #[serde(default)]
        reply_channel: Option<String>,
    }
    let head: Head = parse(payload)?;
    Ok(TaskSubmit {
        id: head.id,
        reply_channel: head.reply_channel,
        task: parse(payload)?,
    })
}

/// Parses a message; a refusal names the field (`priority: invalid type …`).
fn parse<T: for<'de> Deserialize<'de>>(payload: &[u8]) -> Result<T, Rejection> {
    let mut de = serde_json::Deserializer::from_slice(payload);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        Rejection::InvalidField(if path == "." {
            inner.to_string()
        } else {
            format!("{path}: {inner}")
        })
    })
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// Agent ids end up in key and channel names: ASCII letters, digits and `._:-`.
pub fn valid_agent_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_AGENT_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

fn check_msg_id(id: &str) -> Result<(), Rejection> {
    if id.is_empty() || id.len() > MAX_MSG_ID_LEN || id.chars().any(char::is_control) {
        return Err(Rejection::InvalidField(format!(
            "id: must be 1..={MAX_MSG_ID_LEN} printable characters"
        )));
    }
    Ok(())
}

fn check_agent_id(id: &str) -> Result<(), Rejection> {
    if !valid_agent_id(id) {
        return Err(Rejection::InvalidField(format!(
            "agentId: must be 1..={MAX_AGENT_ID_LEN} characters of [A-Za-z0-9._:-], got {:?}",
            truncate(id, 40)
        )));
    }
    Ok(())
}

fn check_resources(r: &Resources) -> Result<(), Rejection> {
    for (name, v) in [("memory", r.memory), ("cpu", r.cpu), ("network", r.network)] {
        if !(v.is_finite() && v >= 0.0) {
            return Err(Rejection::InvalidField(format!(
                "resources.{name}: must be a non-negative number"
            )));
        }
    }
    Ok(())
}

/// Rules serde cannot express. Pool names are checked by the commander, which
/// answers an unknown pool with a reply rather than silence. One arm per
/// message kind: kept whole so that every kind's rules are in one place.
fn validate(msg: &Inbound) -> Result<(), Rejection> {
    match msg {
        Inbound::Register(m) => {
            check_msg_id(&m.id)?;
            check_agent_id(&m.agent_id)?;
        }
        Inbound::Deregister(m) => {
            check_msg_id(&m.id)?;
            check_agent_id(&m.agent_id)?;
        }
        Inbound::Heartbeat(m) => {
            check_agent_id(&m.agent_id)?;
            if !m.status.is_reportable() {
                return Err(Rejection::InvalidField(format!(
                    "status: agents report idle, active or busy, not {}",
                    m.status
                )));
            }
            if !(m.load.is_finite() && (0.0..=1.0).contains(&m.load)) {
                return Err(Rejection::InvalidField("load: must be 0..=1".into()));
            }
            if let Some(r) = &m.resources {
                check_resources(r)?;
            }
        }
        Inbound::StatusRequest(m) => check_msg_id(&m.id)?,
        Inbound::Vote(m) => {
            check_agent_id(&m.agent_id)?;
            if !valid_agent_id(&m.proposal_id) {
                return Err(Rejection::InvalidField("proposalId: invalid".into()));
            }
            if m.hash.len() != 64 || !m.hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(Rejection::InvalidField("hash: 64 hex digits".into()));
            }
            if m.reason.len() > crate::governance::MAX_REASON_LEN {
                return Err(Rejection::InvalidField("reason: at most 512 bytes".into()));
            }
        }
        // Checked as it was read (`misfit`).
        Inbound::Misfit(_) => {}
        Inbound::Report(kind, m) => {
            check_agent_id(&m.agent_id)?;
            if !valid_agent_id(&m.task_id) {
                return Err(Rejection::InvalidField("taskId: invalid".into()));
            }
            if m.usage.is_some_and(|u| !(u.is_finite() && u >= 0.0)) {
                return Err(Rejection::InvalidField(
                    "usage: must be a number >= 0".into(),
                ));
            }
            match kind {
                // A progress report says how far (0..=1), or which step, or both.
                ReportKind::Progress
                    if m.progress.is_some_and(|p| !(0.0..=1.0).contains(&p))
                        || (m.progress.is_none() && m.step.is_none()) =>
                {
                    return Err(Rejection::InvalidField(
                        "progress: must be 0..=1 (or give a step)".into(),
                    ))
                }
                ReportKind::Fail if m.error.as_ref().is_some_and(|e| e.len() > 4096) => {
                    return Err(Rejection::InvalidField("error: at most 4096 bytes".into()))
                }
                ReportKind::Fail if m.error.is_none() => {
                    return Err(Rejection::InvalidField(
                        "error: task_fail needs a text saying why".into(),
                    ))
                }
                _ => {}
            }
        }
        Inbound::TaskSubmit(m) => {
            check_msg_id(&m.id)?;
            if let Some(c) = &m.reply_channel {
                if c.len() > 256 || c.chars().any(|ch| ch.is_control() || ch.is_whitespace()) {
                    return Err(Rejection::InvalidField("replyChannel: invalid".into()));
                }
            }
        }
    }
    Ok(())
}

/// Registration fields the commander refuses with a reply (the agent id is
/// valid, so there is somewhere to send it). Returns the pool on success.
pub fn check_registration(m: &Register) -> Result<PoolType, RegisterRefusal> {
    let pool: PoolType = m.pool.parse().map_err(|_| RegisterRefusal {
        reason: RefusalReason::UnknownPool,
        detail: format!("unknown pool {:?}", truncate(&m.pool, 40)),
    })?;
    let invalid = |detail: String| RegisterRefusal {
        reason: RefusalReason::InvalidFields,
        detail,
    };
    if let Some(p) = m.priority {
        if !(1..=MAX_PRIORITY).contains(&p) {
            return Err(invalid(format!(
                "priority: must be 1..={MAX_PRIORITY}, got {p}"
            )));
        }
    }
    if let Some(t) = &m.agent_type {
        if t.is_empty() || t.len() > 64 || t.chars().any(char::is_control) {
            return Err(invalid(
                "agentType: must be 1..=64 printable characters".into(),
            ));
        }
    }
    if m.capabilities.len() > MAX_CAPABILITIES {
        return Err(invalid(format!(
            "capabilities: at most {MAX_CAPABILITIES}, got {}",
            m.capabilities.len()
        )));
    }
    for c in &m.capabilities {
        if c.is_empty() || c.len() > MAX_CAPABILITY_LEN || c.chars().any(char::is_control) {
            return Err(invalid(format!(
                "capabilities: each must be 1..={MAX_CAPABILITY_LEN} printable characters"
            )));
        }
    }
    check_resources(&m.resources).map_err(|e| invalid(e.to_string()))?;
    if let Some(c) = m.capacity {
        if !(1..=MAX_CAPACITY).contains(&c) {
            return Err(invalid(format!(
                "capacity: must be 1..={MAX_CAPACITY}, got {c}"
            )));
        }
    }
    if let Some(i) = &m.instance {
        if i.len() > 128 || i.chars().any(char::is_control) {
            return Err(invalid("instance: at most 128 printable characters".into()));
        }
    }
    if let Some(k) = &m.session_key {
        if !crate::session::valid_public(k) {
            return Err(invalid(
                "sessionKey: must be an X25519 public key, 32 bytes in base64".into(),
            ));
        }
    }
    Ok(pool)
}

/// Why a registration was refused (the `reason` of a refused `register_reply`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalReason {
    UnknownPool,
    PoolFull,
    FleetFull,
    InvalidFields,
    ResourcesExceedLimits,
    PoolMismatch,
    /// The key's grants do not cover what the registration claims.
    NotGranted,
    Unavailable,
}

impl RefusalReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::UnknownPool => "unknown_pool",
            RefusalReason::PoolFull => "pool_full",
            RefusalReason::FleetFull => "fleet_full",
            RefusalReason::InvalidFields => "invalid_fields",
            RefusalReason::ResourcesExceedLimits => "resources_exceed_limits",
            RefusalReason::PoolMismatch => "pool_mismatch",
            RefusalReason::NotGranted => "not_granted",
            RefusalReason::Unavailable => "unavailable",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterRefusal {
    pub reason: RefusalReason,
    pub detail: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_is_measured_without_parsing_and_bounded_at_the_edge() {
        assert_eq!(json_depth(br#"{"a":[1,{"b":"[[[{{{"}]}"#), 3);
        assert_eq!(json_depth(br#""\"[[""#), 0);
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert_eq!(json_depth(deep(MAX_JSON_DEPTH).as_bytes()), MAX_JSON_DEPTH);
        let msg = |n| {
            format!(
                r#"{{"v":1,"type":"task_complete","taskId":"t","attempt":1,"agentId":"a","result":{}}}"#,
                deep(n)
            )
        };
        assert!(decode(
            Channel::Results,
            msg(MAX_JSON_DEPTH - 1).as_bytes(),
            1 << 20
        )
        .is_ok());
        assert_eq!(
            decode(Channel::Results, msg(8000).as_bytes(), 1 << 20),
            Err(Rejection::TooDeep)
        );
    }
    use crate::Event;

    const MAX: usize = 16 * 1024;

    fn reg(json: &str) -> Result<Decoded, Rejection> {
        decode(Channel::Registry, json.as_bytes(), MAX)
    }

    #[test]
    fn decodes_a_registration() {
        let d = reg(r#"{"v":1,"type":"register","id":"m1","agentId":"coder-1","pool":"coder","capabilities":["rust"],"resources":{"memory":128,"cpu":0.25,"network":10}}"#).unwrap();
        let Decoded::Message(Inbound::Register(r)) = d else {
            panic!("{d:?}")
        };
        assert_eq!(r.agent_id, "coder-1");
        assert_eq!(check_registration(&r), Ok(PoolType::Coder));
        assert_eq!(r.resources.cpu, 0.25);
    }

    #[test]
    fn refuses_bad_messages_with_a_reason() {
        let cases: &[(&str, &str)] = &[
            ("not json", "bad_json"),
            (r#"{"v":2,"type":"register"}"#, "unsupported_version"),
            (r#"{"type":"register"}"#, "invalid_fields"),
            (r#"{"v":1,"type":"explode"}"#, "unknown_type"),
            (
                r#"{"v":1,"type":"heartbeat","agentId":"a","status":"idle"}"#,
                "wrong_channel",
            ),
            (
                r#"{"v":1,"type":"register","id":"m","agentId":"a b","pool":"coder"}"#,
                "invalid_fields",
            ),
            (
                r#"{"v":1,"type":"register","id":"m","pool":"coder"}"#,
                "invalid_fields",
            ),
            (
                r#"{"v":1,"type":"register","id":"","agentId":"a","pool":"coder"}"#,
                "invalid_fields",
            ),
        ];
        for (json, label) in cases {
            let e = reg(json).unwrap_err();
            assert_eq!(e.label(), *label, "{json}: {e}");
        }
        let big = format!(r#"{{"v":1,"type":"register","pad":"{}"}}"#, "x".repeat(MAX));
        assert_eq!(reg(&big).unwrap_err().label(), "oversized");
    }

    #[test]
    fn heartbeat_rules() {
        let hb = |s: &str| decode(Channel::Health, s.as_bytes(), MAX);
        assert!(
            hb(r#"{"v":1,"type":"heartbeat","agentId":"a","status":"busy","load":0.9}"#).is_ok()
        );
        let with =
            r#"{"v":1,"type":"heartbeat","agentId":"a","status":"idle","resources":{"cpu":0.5}}"#;
        assert!(hb(with).is_ok());
        let null = r#"{"v":1,"type":"heartbeat","agentId":"a","status":"idle","resources":null}"#;
        assert!(hb(null).is_ok());
        for bad in [
            r#"{"v":1,"type":"heartbeat","agentId":"a","status":"failed"}"#,
            r#"{"v":1,"type":"heartbeat","agentId":"a","status":"idle","load":1.5}"#,
            r#"{"v":1,"type":"heartbeat","agentId":"a","status":"sleeping"}"#,
            // resources as an array: serde would take it for the struct.
            r#"{"v":1,"type":"heartbeat","agentId":"a","status":"idle","resources":[1,2,3]}"#,
            r#"{"v":1,"type":"heartbeat","agentId":"a","status":"idle","resources":[]}"#,
            r#"{"v":1,"type":"heartbeat","agentId":"a","status":"idle","resources":7}"#,
        ] {
            assert_eq!(hb(bad).unwrap_err().label(), "invalid_fields", "{bad}");
        }
    }

    #[test]
    fn own_events_are_ignored_not_counted() {
        let ev = Event::AgentFailed {
            v: VERSION,
            agent_id: "a".into(),
            pool: PoolType::Ui,
            last_heartbeat: 1,
            failures: 1,
            ts: 2,
        };
        let json = serde_json::to_vec(&ev).unwrap();
        assert_eq!(decode(Channel::Health, &json, MAX), Ok(Decoded::Own));
        // Published on the health channel by the outcome scripts.
        for ev in [
            Event::AgentQuarantined {
                v: VERSION,
                agent_id: "a".into(),
                health: 40,
                until: 5,
                ts: 2,
            },
            Event::AgentProbation {
                v: VERSION,
                agent_id: "a".into(),
                ts: 2,
            },
        ] {
            let json = serde_json::to_vec(&ev).unwrap();
            assert_eq!(
                decode(Channel::Health, &json, MAX),
                Ok(Decoded::Own),
                "{ev:?}"
            );
        }
    }

    #[test]
    fn registration_refusals() {
        let mut r = Register {
            id: "m".into(),
            agent_id: "a".into(),
            pool: "wizard".into(),
            agent_type: None,
            priority: None,
            capabilities: vec![],
            resources: Resources::default(),
            capacity: None,
            instance: None,
            session_key: None,
        };
        assert_eq!(
            check_registration(&r).unwrap_err().reason,
            RefusalReason::UnknownPool
        );
        r.pool = "ui".into();
        r.priority = Some(0);
        assert_eq!(
            check_registration(&r).unwrap_err().reason,
            RefusalReason::InvalidFields
        );
        r.priority = Some(10);
        r.capabilities = vec!["x".into(); 33];
        assert_eq!(
            check_registration(&r).unwrap_err().reason,
            RefusalReason::InvalidFields
        );
        r.capabilities = vec![];
        r.resources.cpu = -1.0;
        assert_eq!(
            check_registration(&r).unwrap_err().reason,
            RefusalReason::InvalidFields
        );
        r.resources.cpu = f64::NAN;
        assert_eq!(
            check_registration(&r).unwrap_err().reason,
            RefusalReason::InvalidFields
        );
    }
}
