//! [`Secret`]: an API key that never shows itself in `Debug`, logs or errors.

use std::fmt;
use std::sync::Arc;

/// An API key or token. `Debug` prints `***`; there is deliberately no `Display`, so a key cannot
/// reach a log line or an error message by accident — only [`Secret::expose`] reveals it, at the
/// one place that writes the request header.
///
/// ```
/// use agent_runtime::provider::Secret;
///
/// let key = Secret::new("sk-live-abc123");
/// assert_eq!(format!("{key:?}"), "***");
/// assert_eq!(key.expose(), "sk-live-abc123");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wraps a key.
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Self(value.into())
    }

    /// The key itself. Call it only where the key is sent.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True for an empty key.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `text` with every occurrence of the key replaced by `***` (servers sometimes echo the key
    /// they rejected).
    pub fn redact(&self, text: &str) -> String {
        if self.0.is_empty() {
            text.to_owned()
        } else {
            text.replace(&*self.0, "***")
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self::new(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self::new(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_redaction_hide_the_key() {
        let key = Secret::new("sk-XYZ");
        assert_eq!(format!("{key:?}"), "***");
        assert_eq!(format!("{:?}", Some(key.clone())), "Some(***)");
        assert_eq!(
            key.redact("Incorrect API key provided: sk-XYZ."),
            "Incorrect API key provided: ***."
        );
        assert_eq!(Secret::new("").redact("text"), "text");
    }
}
