//! Trigger rules: whether a step fires, waits or is skipped given its parents' outcomes.

use crate::manifest::Trigger;

/// How a step's parents have ended so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ParentCounts {
    pub total: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub skipped: u32,
}

impl ParentCounts {
    pub fn done(&self) -> u32 {
        self.succeeded + self.failed + self.skipped
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Fire,
    Wait,
    Skip(&'static str),
}

pub fn evaluate(rule: Trigger, c: ParentCounts) -> Verdict {
    use Verdict::*;
    let all_done = c.done() == c.total;
    match rule {
        Trigger::AllSuccess if c.succeeded == c.total => Fire,
        Trigger::AllSuccess if c.failed + c.skipped > 0 => Skip("an upstream step did not succeed"),
        Trigger::AllDone if all_done => Fire,
        Trigger::OneSuccess if c.succeeded >= 1 => Fire,
        Trigger::OneSuccess if all_done => Skip("no upstream step succeeded"),
        Trigger::OneDone if c.succeeded + c.failed >= 1 => Fire,
        Trigger::OneDone if all_done => Skip("every upstream step was skipped"),
        Trigger::OneFailed if c.failed >= 1 => Fire,
        Trigger::OneFailed if all_done => Skip("no upstream step failed"),
        Trigger::NoneFailedMinOneSuccess if c.failed > 0 => Skip("an upstream step failed"),
        Trigger::NoneFailedMinOneSuccess if all_done && c.succeeded >= 1 => Fire,
        Trigger::NoneFailedMinOneSuccess if all_done => Skip("no upstream step succeeded"),
        Trigger::Quorum(n) if c.succeeded >= n => Fire,
        Trigger::Quorum(n) if c.succeeded + (c.total - c.done()) < n => {
            Skip("the quorum can no longer be reached")
        }
        _ => Wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(total: u32, succeeded: u32, failed: u32, skipped: u32) -> ParentCounts {
        ParentCounts {
            total,
            succeeded,
            failed,
            skipped,
        }
    }

    #[test]
    fn rules_match_their_names() {
        use Verdict::*;
        assert_eq!(evaluate(Trigger::AllSuccess, c(0, 0, 0, 0)), Fire);
        assert_eq!(evaluate(Trigger::AllSuccess, c(2, 1, 0, 0)), Wait);
        assert!(matches!(
            evaluate(Trigger::AllSuccess, c(2, 1, 1, 0)),
            Skip(_)
        ));
        assert_eq!(evaluate(Trigger::AllDone, c(2, 0, 1, 1)), Fire);
        assert_eq!(evaluate(Trigger::AllDone, c(2, 0, 1, 0)), Wait);
        assert_eq!(evaluate(Trigger::OneSuccess, c(3, 1, 0, 0)), Fire);
        assert!(matches!(
            evaluate(Trigger::OneSuccess, c(2, 0, 2, 0)),
            Skip(_)
        ));
        assert_eq!(evaluate(Trigger::OneDone, c(2, 0, 1, 0)), Fire);
        assert!(matches!(evaluate(Trigger::OneDone, c(2, 0, 0, 2)), Skip(_)));
        assert_eq!(evaluate(Trigger::OneFailed, c(3, 0, 1, 0)), Fire);
        assert!(matches!(
            evaluate(Trigger::OneFailed, c(2, 2, 0, 0)),
            Skip(_)
        ));
        assert_eq!(
            evaluate(Trigger::NoneFailedMinOneSuccess, c(2, 1, 0, 1)),
            Fire
        );
        assert!(matches!(
            evaluate(Trigger::NoneFailedMinOneSuccess, c(2, 1, 1, 0)),
            Skip(_)
        ));
        assert!(matches!(
            evaluate(Trigger::NoneFailedMinOneSuccess, c(2, 0, 0, 2)),
            Skip(_)
        ));
        assert_eq!(evaluate(Trigger::Quorum(2), c(3, 2, 0, 0)), Fire);
        assert_eq!(evaluate(Trigger::Quorum(2), c(3, 1, 1, 0)), Wait);
        assert!(matches!(
            evaluate(Trigger::Quorum(2), c(3, 1, 2, 0)),
            Skip(_)
        ));
    }
}
