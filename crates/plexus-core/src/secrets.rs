//! Which names hold secrets: settings keys (at any depth of their value) and step
//! environment variables are judged by the same words, so an approver is never shown a
//! token and the audit log never keeps one.

/// Words that make a name secret: `api_key`, `DB_PASSWORD`, `clientSecret`, `authToken`,
/// `credentials`. Counts such as `max_tokens` are not secrets.
pub const SECRET_WORDS: &[&str] = &[
    "password",
    "passwd",
    "pwd",
    "passphrase",
    "secret",
    "token",
    "key",
    "apikey",
    "credential",
    "credentials",
    "auth",
    "authorization",
];

/// Splits a name into lowercase words at `.`, `_`, `-` and camelCase humps.
fn words(name: &str) -> Vec<String> {
    let mut words = vec![String::new()];
    let mut prev_lower = false;
    for c in name.chars() {
        if !c.is_alphanumeric() {
            words.push(String::new());
            prev_lower = false;
            continue;
        }
        if c.is_uppercase() && prev_lower {
            words.push(String::new());
        }
        prev_lower = c.is_lowercase() || c.is_ascii_digit();
        if let Some(w) = words.last_mut() {
            w.extend(c.to_lowercase());
        }
    }
    words.retain(|w| !w.is_empty());
    words
}

/// Whether a name says it holds a secret.
pub fn names_secret(name: &str) -> bool {
    words(name)
        .iter()
        .any(|w| SECRET_WORDS.contains(&w.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_split_into_words() {
        for secret in [
            "api_key",
            "DB_PASSWORD",
            "clientSecret",
            "authToken",
            "x.credentials",
            "GITHUB_TOKEN",
        ] {
            assert!(names_secret(secret), "{secret}");
        }
        for plain in [
            "max_tokens",
            "keyboard",
            "monkey",
            "base_url",
            "REGION",
            "PATH",
        ] {
            assert!(!names_secret(plain), "{plain}");
        }
    }
}
