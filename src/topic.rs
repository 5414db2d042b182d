//! Topics and topic patterns: `.`-separated tokens, where `*` in a pattern
//! matches exactly one token and a final `>` matches one or more tokens
//! (the NATS convention, so `sigint.>` matches `sigint.ru` but not `sigint`).

use std::fmt;

use serde::{Deserialize, Serialize};

/// The longest topic or pattern accepted, in bytes; a bound on what one
/// frame can make a node store.
pub const MAX_TOPIC_LEN: usize = 256;

/// Why a topic or pattern was refused; variants hold the text as given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The text is empty.
    #[error("empty topic: expected tokens separated by `.`, such as sigint.ru.launch")]
    Empty,
    /// The text is longer than [`MAX_TOPIC_LEN`] bytes.
    #[error("topic `{0}` is longer than {MAX_TOPIC_LEN} bytes")]
    TooLong(String),
    /// A token is empty: a leading, trailing or doubled `.`.
    #[error("topic `{0}` has an empty token (leading, trailing or doubled `.`)")]
    EmptyToken(String),
    /// A token holds whitespace, a control character, or a `*` or `>` among
    /// other characters.
    #[error("topic `{topic}` has a bad token `{token}`: tokens may not contain spaces, `*` or `>`")]
    BadToken {
        /// The topic or pattern.
        topic: String,
        /// The bad token.
        token: String,
    },
    /// A pattern has `>` other than as its last token.
    #[error("pattern `{0}`: `>` may only be the last token")]
    TailNotLast(String),
    /// A topic has a `*` or `>` token: only patterns may.
    #[error("topic `{0}` has a wildcard: publish to a concrete topic, wildcards are for subscribing")]
    WildcardInTopic(String),
}

/// A concrete topic that a message is published on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Topic(String);

/// A subscription or permission pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Pattern(String);

fn check_tokens(text: &str, allow_wildcards: bool) -> Result<(), TopicError> {
    if text.is_empty() {
        return Err(TopicError::Empty);
    }
    if text.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong(text.to_owned()));
    }
    let count = text.split('.').count();
    for (index, token) in text.split('.').enumerate() {
        if token.is_empty() {
            return Err(TopicError::EmptyToken(text.to_owned()));
        }
        match token {
            "*" | ">" if !allow_wildcards => return Err(TopicError::WildcardInTopic(text.to_owned())),
            ">" if index + 1 != count => return Err(TopicError::TailNotLast(text.to_owned())),
            "*" | ">" => {}
            _ if token
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '*' || c == '>') =>
            {
                return Err(TopicError::BadToken {
                    topic: text.to_owned(),
                    token: token.to_owned(),
                })
            }
            _ => {}
        }
    }
    Ok(())
}

impl Topic {
    /// Checks and wraps a concrete topic: no wildcards.
    pub fn new(text: impl Into<String>) -> Result<Topic, TopicError> {
        let text = text.into();
        check_tokens(&text, false)?;
        Ok(Topic(text))
    }

    /// The topic's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Pattern {
    /// Checks and wraps a pattern: `*` anywhere, `>` only last.
    pub fn new(text: impl Into<String>) -> Result<Pattern, TopicError> {
        let text = text.into();
        check_tokens(&text, true)?;
        Ok(Pattern(text))
    }

    /// The pattern's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the pattern matches `topic`.
    pub fn matches(&self, topic: &Topic) -> bool {
        let mut topic_tokens = topic.0.split('.');
        for pattern_token in self.0.split('.') {
            match pattern_token {
                // `>` is always last (checked at construction) and needs at
                // least one more token.
                ">" => return topic_tokens.next().is_some(),
                "*" => {
                    if topic_tokens.next().is_none() {
                        return false;
                    }
                }
                literal => {
                    if topic_tokens.next() != Some(literal) {
                        return false;
                    }
                }
            }
        }
        topic_tokens.next().is_none()
    }

    /// Whether every topic this pattern matches is also matched by
    /// `other`, so a subscription on `self` stays within a permission
    /// `other`.
    pub fn is_covered_by(&self, other: &Pattern) -> bool {
        let mine: Vec<&str> = self.0.split('.').collect();
        let theirs: Vec<&str> = other.0.split('.').collect();
        for (index, their_token) in theirs.iter().enumerate() {
            let Some(my_token) = mine.get(index) else {
                return false;
            };
            match *their_token {
                ">" => return true,
                "*" => {
                    if *my_token == ">" {
                        return false;
                    }
                }
                literal => {
                    if *my_token != literal {
                        return false;
                    }
                }
            }
        }
        mine.len() == theirs.len()
    }
}

macro_rules! string_newtype {
    ($name:ident) => {
        impl TryFrom<String> for $name {
            type Error = TopicError;
            fn try_from(text: String) -> Result<Self, Self::Error> {
                $name::new(text)
            }
        }
        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl std::str::FromStr for $name {
            type Err = TopicError;
            fn from_str(text: &str) -> Result<Self, Self::Err> {
                $name::new(text)
            }
        }
    };
}
string_newtype!(Topic);
string_newtype!(Pattern);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(text: &str) -> Pattern {
        Pattern::new(text).unwrap()
    }
    fn t(text: &str) -> Topic {
        Topic::new(text).unwrap()
    }

    #[test]
    fn wildcards_match_as_documented() {
        assert!(p("sigint.>").matches(&t("sigint.ru")));
        assert!(p("sigint.>").matches(&t("sigint.ru.launch")));
        assert!(!p("sigint.>").matches(&t("sigint")));
        assert!(!p("sigint.>").matches(&t("humint.ru")));
        assert!(p("*.missile").matches(&t("ru.missile")));
        assert!(!p("*.missile").matches(&t("ru.sea.missile")));
        assert!(!p("*.missile").matches(&t("missile")));
        assert!(p(">").matches(&t("anything.at.all")));
        assert!(p("a.*.c").matches(&t("a.b.c")));
        assert!(!p("a.*.c").matches(&t("a.b.d")));
        assert!(p("a.b").matches(&t("a.b")));
        assert!(!p("a.b").matches(&t("a.b.c")));
        assert!(!p("a.b.c").matches(&t("a.b")));
    }

    #[test]
    fn bad_topics_and_patterns_are_refused() {
        assert_eq!(Topic::new(""), Err(TopicError::Empty));
        assert!(matches!(Topic::new("a..b"), Err(TopicError::EmptyToken(_))));
        assert!(matches!(Topic::new(".a"), Err(TopicError::EmptyToken(_))));
        assert!(matches!(Topic::new("a.*"), Err(TopicError::WildcardInTopic(_))));
        assert!(matches!(Topic::new("a b"), Err(TopicError::BadToken { .. })));
        assert!(matches!(Pattern::new("a.>.b"), Err(TopicError::TailNotLast(_))));
        assert!(matches!(Pattern::new("a*.b"), Err(TopicError::BadToken { .. })));
        assert!(matches!(
            Topic::new("a".repeat(MAX_TOPIC_LEN + 1)),
            Err(TopicError::TooLong(_))
        ));
    }

    #[test]
    fn coverage_between_patterns() {
        assert!(p("sigint.ru.>").is_covered_by(&p("sigint.>")));
        assert!(p("sigint.*").is_covered_by(&p("sigint.>")));
        assert!(p("sigint.>").is_covered_by(&p(">")));
        assert!(!p("sigint.>").is_covered_by(&p("sigint.*")));
        assert!(!p(">").is_covered_by(&p("sigint.>")));
        assert!(p("a.b").is_covered_by(&p("a.*")));
        assert!(!p("a.*").is_covered_by(&p("a.b")));
        assert!(!p("a").is_covered_by(&p("a.>")));
    }

    fn arb_token() -> impl Strategy<Value = String> {
        prop_oneof![Just("a".to_owned()), Just("b".to_owned()), Just("c".to_owned())]
    }

    fn arb_pattern() -> impl Strategy<Value = Pattern> {
        (
            proptest::collection::vec(prop_oneof![arb_token(), Just("*".to_owned())], 0..4),
            any::<bool>(),
        )
            .prop_filter_map("non-empty", |(mut tokens, tail)| {
                if tail {
                    tokens.push(">".to_owned());
                }
                Pattern::new(tokens.join(".")).ok()
            })
    }

    fn arb_topic() -> impl Strategy<Value = Topic> {
        proptest::collection::vec(arb_token(), 1..5).prop_map(|t| Topic::new(t.join(".")).unwrap())
    }

    proptest! {
        /// Coverage must be sound: a covered pattern never matches a topic
        /// the covering pattern does not. Subscribe permissions rely on it.
        #[test]
        fn coverage_is_sound(a in arb_pattern(), b in arb_pattern(), topic in arb_topic()) {
            if a.is_covered_by(&b) && a.matches(&topic) {
                prop_assert!(b.matches(&topic), "{a} covered by {b} but {topic} escapes");
            }
        }

        #[test]
        fn every_pattern_covers_itself(a in arb_pattern()) {
            prop_assert!(a.is_covered_by(&a));
        }

        #[test]
        fn construction_never_panics(text in "\\PC{0,40}") {
            let _ = Topic::new(text.clone());
            let _ = Pattern::new(text);
        }
    }
}
