//! Content rules: which reply-able events get no reply, and why (contract section 9).

use crate::logs::SkipReason;

/// Longest text replied to, in characters; longer is `too_long`.
pub const MAX_LEN: usize = 2200;
/// Most links a replied-to text may hold; more is `spam`.
pub const MAX_LINKS: usize = 2;
/// A run of one character this long is `spam`.
pub const MAX_REPEAT: usize = 10;

/// What the rules look at, gathered by the use case.
pub struct RuleInput<'a> {
    /// The text judged (the message, or a marker for content without text); `None` or
    /// blank is `empty`.
    pub text: Option<&'a str>,
    /// The account's own comment or a message echo: replying would loop (`own_message`).
    pub is_own: bool,
    /// The post's switch; true when the post is unknown (`replies_disabled` when false).
    pub replies_enabled: bool,
    /// The persona's blocklist words (`blocklisted`).
    pub blocklist: &'a [String],
}

/// The first rule that says "don't reply", in an order that puts the loop guard first
/// and the costlier text scans last.
pub fn check(input: &RuleInput<'_>) -> Option<SkipReason> {
    if input.is_own {
        return Some(SkipReason::OwnMessage);
    }
    if !input.replies_enabled {
        return Some(SkipReason::RepliesDisabled);
    }
    let text = input.text.unwrap_or("").trim();
    if text.is_empty() {
        return Some(SkipReason::Empty);
    }
    if text.chars().count() > MAX_LEN {
        return Some(SkipReason::TooLong);
    }
    if is_spam(text) {
        return Some(SkipReason::Spam);
    }
    if blocklisted(text, input.blocklist) {
        return Some(SkipReason::Blocklisted);
    }
    None
}

/// More than two links, or one character repeated ten times in a row.
pub fn is_spam(text: &str) -> bool {
    let lower = text.to_lowercase();
    let links = lower.matches("http://").count()
        + lower.matches("https://").count()
        + lower
            .split_whitespace()
            .filter(|w| w.starts_with("www.") && !w.contains("://"))
            .count();
    if links > MAX_LINKS {
        return true;
    }
    let mut run = 0;
    let mut prev = None;
    for c in text.chars() {
        if Some(c) == prev {
            run += 1;
        } else {
            run = 1;
            prev = Some(c);
        }
        if run >= MAX_REPEAT {
            return true;
        }
    }
    false
}

/// Whole-word, case-insensitive match. A blocklist entry of several words matches
/// that exact sequence of words.
pub fn blocklisted(text: &str, blocklist: &[String]) -> bool {
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    blocklist.iter().any(|entry| {
        let needle: Vec<String> = entry
            .split(|c: char| !c.is_alphanumeric() && c != '\'')
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect();
        !needle.is_empty() && words.windows(needle.len()).any(|w| w == needle.as_slice())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(text: &str) -> RuleInput<'_> {
        RuleInput {
            text: Some(text),
            is_own: false,
            replies_enabled: true,
            blocklist: &[],
        }
    }

    #[test]
    fn each_rule() {
        assert_eq!(check(&input("Nice jacket!")), None);
        assert_eq!(check(&input("   ")), Some(SkipReason::Empty));
        assert_eq!(
            check(&RuleInput {
                text: None,
                ..input("")
            }),
            Some(SkipReason::Empty)
        );
        assert_eq!(
            check(&RuleInput {
                is_own: true,
                ..input("hi")
            }),
            Some(SkipReason::OwnMessage)
        );
        assert_eq!(
            check(&RuleInput {
                replies_enabled: false,
                ..input("hi")
            }),
            Some(SkipReason::RepliesDisabled)
        );
        assert_eq!(check(&input(&"a ".repeat(1101))), Some(SkipReason::TooLong));
        assert_eq!(
            check(&input("see http://a.b https://c.d www.e.f")),
            Some(SkipReason::Spam)
        );
        assert_eq!(check(&input("see http://a.b https://c.d")), None);
        assert_eq!(check(&input("wooooooooooow")), Some(SkipReason::Spam));
        assert_eq!(check(&input("woooooooow")), None); // 9 in a row
        let bl = vec!["scam".to_string(), "free money".to_string()];
        assert_eq!(
            check(&RuleInput {
                blocklist: &bl,
                ..input("This is a SCAM!")
            }),
            Some(SkipReason::Blocklisted)
        );
        assert_eq!(
            check(&RuleInput {
                blocklist: &bl,
                ..input("scammer here")
            }),
            None
        );
        assert_eq!(
            check(&RuleInput {
                blocklist: &bl,
                ..input("get Free   money now")
            }),
            Some(SkipReason::Blocklisted)
        );
    }

    #[test]
    fn exactly_at_the_limit_is_fine() {
        assert_eq!(
            check(&input(&"é".repeat(MAX_LEN).replace("éé", "é "))),
            None
        );
    }
}
