//! The store's one error type. Conversions have no side effects: whoever
//! handles an error counts it (the commander's supervisor and HTTP layer).

/// Why a call to the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another commander has a newer epoch: this one must stop writing.
    #[error("fenced: a newer commander holds the epoch")]
    Fenced,
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("unexpected reply: {0}")]
    Parse(#[from] redis::ParsingError),
    /// The message's nonce was recorded already (a replay): nothing changed.
    #[error("replay: the message's nonce was seen before")]
    Replay,
    /// A script answered something its wrapper does not know.
    #[error("unexpected reply from a script: {0}")]
    Reply(String),
}

impl StoreError {
    /// The connection dropped or timed out (the connection manager reconnects).
    pub fn is_connection_dropped(&self) -> bool {
        match self {
            StoreError::Redis(e) => e.is_connection_dropped() || e.is_io_error() || e.is_timeout(),
            _ => false,
        }
    }

    /// A small fixed label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            StoreError::Fenced => "fenced",
            StoreError::Redis(_) if self.is_connection_dropped() => "connection",
            StoreError::Redis(_) => "redis",
            StoreError::Parse(_) | StoreError::Reply(_) => "reply",
            StoreError::Replay => "replay",
        }
    }
}

/// A script's error: `FENCED` means a newer commander took over.
pub(crate) fn from_script(e: redis::RedisError) -> StoreError {
    if e.code() == Some("FENCED") {
        StoreError::Fenced
    } else {
        StoreError::Redis(e)
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;
