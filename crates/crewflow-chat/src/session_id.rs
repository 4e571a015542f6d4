//! [`SessionId`]: a checked session id, so a message can never be taken for one.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::ChatError;

/// The longest session id, in bytes.
pub const MAX_SESSION_ID_BYTES: usize = 256;

/// The id of a conversation session: non-empty, at most 256 bytes, no control characters.
///
/// Turn and session calls take a `SessionId`, never a plain string, so the session and the
/// message cannot be swapped (CrewAI's `handle_turn(message, session_id=...)` takes them in the
/// other order; ported as two strings, the message would silently name a new session). It is
/// checked once, where it is made:
///
/// ```
/// use crewflow_chat::SessionId;
/// let id = SessionId::new("user-42")?;
/// let same: SessionId = "user-42".parse()?;
/// assert_eq!(id, same);
/// assert_eq!(id.as_str(), "user-42");
/// assert!(SessionId::new("two\nlines").is_err());
/// # Ok::<(), crewflow_chat::ChatError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SessionId(String);

impl SessionId {
    /// Checks `id`: [`ChatError::InvalidSessionId`] when it is empty, longer than 256 bytes
    /// or holds a control character (the error shows the id with those escaped).
    pub fn new(id: impl Into<String>) -> Result<Self, ChatError> {
        let id = id.into();
        let reason = if id.is_empty() {
            "it is empty"
        } else if id.len() > MAX_SESSION_ID_BYTES {
            "it is longer than 256 bytes"
        } else if id.chars().any(char::is_control) {
            "it contains control characters"
        } else {
            return Ok(SessionId(id));
        };
        Err(ChatError::InvalidSessionId { id: shown(&id), reason })
    }

    /// A fresh, unique id (a UUID v7: ids made later sort later).
    pub fn generate() -> Self {
        SessionId(crewflow_core::RunId::new().to_string())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id as an owned string.
    pub fn into_string(self) -> String {
        self.0
    }
}

/// Checks a turn key ([`ChatFlow::handle_turn_once`](crate::ChatFlow::handle_turn_once)):
/// non-empty, at most 255 bytes, no control characters; else [`ChatError::InvalidTurnKey`].
/// For a caller that takes keys from clients and refuses a bad one before starting a turn.
pub fn check_turn_key(key: &str) -> Result<(), ChatError> {
    let reason = if key.is_empty() {
        "it is empty"
    } else if key.len() > 255 {
        "it is longer than 255 bytes"
    } else if key.chars().any(char::is_control) {
        "it contains control characters"
    } else {
        return Ok(());
    };
    Err(ChatError::InvalidTurnKey { key: shown(key), reason })
}

/// The id as an error message may show it: at most 64 characters, control characters escaped.
fn shown(id: &str) -> String {
    let mut out = String::new();
    let mut chars = id.chars();
    for c in chars.by_ref().take(64) {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({:?})", self.0)
    }
}

impl FromStr for SessionId {
    type Err = ChatError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SessionId::new(s)
    }
}

impl TryFrom<String> for SessionId {
    type Error = ChatError;

    fn try_from(id: String) -> Result<Self, Self::Error> {
        SessionId::new(id)
    }
}

impl TryFrom<&str> for SessionId {
    type Error = ChatError;

    fn try_from(id: &str) -> Result<Self, Self::Error> {
        SessionId::new(id)
    }
}

impl From<SessionId> for String {
    fn from(id: SessionId) -> Self {
        id.0
    }
}

impl AsRef<str> for SessionId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// What turn and session calls accept as a session: a [`SessionId`] or a reference to one,
/// never a plain string (see [`SessionId`] for why).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a session id: turn and session calls take a `SessionId`",
    label = "expected a `SessionId` here: the session comes first, `handle_turn(&session, message)`",
    note = "make one with `SessionId::new(\"user-42\")?` or `\"user-42\".parse::<SessionId>()?`; it is checked once, there",
    note = "CrewAI's `handle_turn(message, session_id=...)` takes the message first; crewflow takes the session first, and never a plain string for it, so the two cannot be swapped"
)]
pub trait AsSessionId {
    /// The session id.
    fn as_session_id(&self) -> &SessionId;
}

impl AsSessionId for SessionId {
    fn as_session_id(&self) -> &SessionId {
        self
    }
}

impl AsSessionId for &SessionId {
    fn as_session_id(&self) -> &SessionId {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_and_errors_escape_what_they_echo() {
        assert!(SessionId::new("user-42").is_ok());
        assert!(SessionId::new("é".repeat(128)).is_ok(), "256 bytes is the limit, not 256 characters");
        let cases: [(String, &str, &str); 4] = [
            (String::new(), "it is empty", "``"),
            ("x".repeat(257), "longer than 256 bytes", "…`"),
            ("a\nb".into(), "control characters", r"`a\nb`"),
            ("tab\there\u{1b}[31m".into(), "control characters", r"`tab\there\u{1b}[31m`"),
        ];
        for (id, reason, echoed) in cases {
            let err = SessionId::new(id.clone()).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(reason) && text.contains(echoed), "{id:?}: {text}");
            assert!(!text.chars().any(char::is_control), "the message holds no control character: {text:?}");
        }
    }

    #[test]
    fn ids_parse_and_deserialize_with_the_same_checks() {
        assert_eq!("s1".parse::<SessionId>().unwrap().to_string(), "s1");
        assert!("".parse::<SessionId>().is_err());
        let ok: SessionId = serde_json::from_str(r#""s1""#).unwrap();
        assert_eq!(serde_json::to_string(&ok).unwrap(), r#""s1""#);
        assert!(serde_json::from_str::<SessionId>(r#""a\nb""#).is_err());
    }
}
