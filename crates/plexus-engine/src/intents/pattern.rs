//! Intent phrases with placeholders (`why is {service} slow`), matched against a whole
//! question word by word: literal words ignore case and punctuation around them; a
//! placeholder takes one or more words, as few as let the rest match.

/// The longest question (in words) phrases are matched against.
pub const MAX_WORDS: usize = 48;

/// What placeholders took: (name, words).
pub type Slots = Vec<(String, String)>;

/// One part of a phrase.
#[derive(Debug, Clone, PartialEq)]
enum Part {
    Word(String),
    Slot(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Pattern {
    text: String,
    parts: Vec<Part>,
}

/// A word as compared: lower case, without the punctuation around it.
fn bare(word: &str) -> String {
    word.trim_matches(|c: char| !c.is_alphanumeric())
        .to_lowercase()
}

/// A word as a placeholder keeps it: its case, without sentence punctuation at its end
/// (`checkout?` is `checkout`; `v1.2` stays).
fn value_word(word: &str) -> &str {
    word.trim_end_matches(['?', '!', ',', ';', ':', '.', '"', '\''])
        .trim_start_matches(['"', '\''])
}

impl Pattern {
    pub fn new(text: &str) -> Pattern {
        let parts = text
            .split_whitespace()
            .filter_map(|w| {
                let t = w.trim_matches(|c: char| {
                    !(c.is_alphanumeric() || c == '{' || c == '}' || c == '_')
                });
                match t.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
                    Some(name) if !name.is_empty() => Some(Part::Slot(name.to_owned())),
                    _ => {
                        let b = bare(w);
                        (!b.is_empty()).then_some(Part::Word(b))
                    }
                }
            })
            .collect();
        Pattern {
            text: text.to_owned(),
            parts,
        }
    }

    /// How many literal words it has.
    pub fn words(&self) -> usize {
        self.parts
            .iter()
            .filter(|p| matches!(p, Part::Word(_)))
            .count()
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// The placeholders' words when the whole question matches. A question longer than
    /// [`MAX_WORDS`] matches no phrase: placeholders try every split of the words, so the
    /// work must stay bounded whatever is asked.
    pub fn matches(&self, question: &str) -> Option<Slots> {
        let words: Vec<&str> = question
            .split_whitespace()
            .filter(|w| !bare(w).is_empty() || w.chars().any(char::is_alphanumeric))
            .collect();
        if self.parts.is_empty() || words.len() > MAX_WORDS {
            return None;
        }
        // Most phrases begin with a word of their own: most questions fail them here.
        if let (Some(Part::Word(w)), Some(first)) = (self.parts.first(), words.first())
            && bare(first) != *w
        {
            return None;
        }
        let mut slots = Vec::new();
        let mut failed = std::collections::HashSet::new();
        self.match_from(0, &words, 0, &mut slots, &mut failed)
            .then_some(slots)
    }

    /// Whether parts `part..` match `words[at..]`. What follows depends only on
    /// `(part, at)`, so a place that failed once is not tried again: the work is at most
    /// parts × words², whatever the placeholders.
    fn match_from(
        &self,
        part: usize,
        words: &[&str],
        at: usize,
        slots: &mut Slots,
        failed: &mut std::collections::HashSet<(usize, usize)>,
    ) -> bool {
        let Some(p) = self.parts.get(part) else {
            return at == words.len();
        };
        if failed.contains(&(part, at)) {
            return false;
        }
        let matched = match p {
            Part::Word(w) => {
                words.get(at).is_some_and(|first| bare(first) == *w)
                    && self.match_from(part + 1, words, at + 1, slots, failed)
            }
            Part::Slot(name) => (at + 1..=words.len()).any(|end| {
                let mark = slots.len();
                let value: Vec<&str> = words[at..end].iter().map(|w| value_word(w)).collect();
                slots.push((name.clone(), value.join(" ")));
                let fits = self.match_from(part + 1, words, end, slots, failed);
                if !fits {
                    slots.truncate(mark);
                }
                fits
            }),
        };
        if !matched {
            failed.insert((part, at));
        }
        matched
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, q: &str) -> Option<Vec<(String, String)>> {
        Pattern::new(p).matches(q)
    }

    #[test]
    fn placeholders_take_the_words_between_the_literal_ones() {
        assert_eq!(
            m("why is {service} slow", "Why is Checkout slow?"),
            Some(vec![("service".into(), "Checkout".into())])
        );
        assert_eq!(
            m(
                "restart {service} in {env}",
                "restart payment api in prod-eu."
            ),
            Some(vec![
                ("service".into(), "payment api".into()),
                ("env".into(), "prod-eu".into())
            ])
        );
        assert_eq!(
            m(
                "scale {service} to {replicas} replicas",
                "Scale web to 3 replicas"
            ),
            Some(vec![
                ("service".into(), "web".into()),
                ("replicas".into(), "3".into())
            ])
        );
        assert_eq!(m("why is {service} slow", "why is slow"), None);
        assert_eq!(
            m("why is {service} slow", "why is checkout slow today"),
            None
        );
        assert_eq!(m("show disk usage", "Show  disk usage!"), Some(vec![]));
        assert_eq!(m("", "anything"), None);
        // Many placeholders against questions that cannot match: a long one is refused
        // outright; one at the limit is tried place by place, not split by split.
        assert_eq!(m("{a} {b} {c} {d} end", &"w ".repeat(5_000)), None);
        assert_eq!(
            m("{a} {b} {c} {d} {e} {f} end", &"w ".repeat(MAX_WORDS)),
            None
        );
        assert_eq!(
            m("{a} {b} end", "x y z end"),
            Some(vec![("a".into(), "x".into()), ("b".into(), "y z".into())])
        );
    }
}
