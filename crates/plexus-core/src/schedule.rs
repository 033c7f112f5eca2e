//! Cron schedules: when a schedule fires next, and which ticks were missed.

use crate::machine::Millis;
use chrono::{DateTime, TimeZone, Utc};

/// What a schedule does about ticks that passed while nothing was running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Fire once for the newest missed tick, then carry on.
    #[default]
    Skip,
    /// Fire once for every missed tick (at most [`MAX_CATCH_UP`]).
    RunMissed,
}

impl CatchUp {
    pub fn as_str(self) -> &'static str {
        match self {
            CatchUp::Skip => "skip",
            CatchUp::RunMissed => "run_missed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "skip" => Some(CatchUp::Skip),
            "run_missed" => Some(CatchUp::RunMissed),
            _ => None,
        }
    }
}

/// Most missed ticks fired at once by [`CatchUp::RunMissed`].
pub const MAX_CATCH_UP: usize = 1000;

fn parse(cron: &str) -> Result<croner::Cron, String> {
    cron.parse::<croner::Cron>()
        .map_err(|e| format!("`{cron}` is not a valid cron expression: {e}"))
}

fn to_time(ms: Millis) -> Result<DateTime<Utc>, String> {
    Utc.timestamp_millis_opt(ms as i64)
        .single()
        .ok_or_else(|| format!("{ms} is not a time"))
}

/// A time given by a person: RFC 3339 (`2026-11-22T10:00:00Z`) or a date
/// (`2026-11-22`, midnight UTC). `None` when it is neither.
pub fn parse_time(text: &str) -> Option<Millis> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return u64::try_from(t.timestamp_millis()).ok();
    }
    let date = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
    u64::try_from(date.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis()).ok()
}

/// The first tick strictly after `after` (UTC). Five fields, or six with seconds first.
pub fn next_fire(cron: &str, after: Millis) -> Result<Millis, String> {
    let next = parse(cron)?
        .find_next_occurrence(&to_time(after)?, false)
        .map_err(|e| e.to_string())?;
    Ok(next.timestamp_millis() as Millis)
}

/// The ticks to fire now: those from `next_fire_at` up to `now`, as the policy says.
pub fn due_ticks(
    cron: &str,
    next_fire_at: Millis,
    now: Millis,
    policy: CatchUp,
) -> Result<Vec<Millis>, String> {
    let mut ticks = Vec::new();
    let mut tick = next_fire_at;
    while tick <= now {
        ticks.push(tick);
        if ticks.len() > MAX_CATCH_UP {
            ticks.remove(0);
        }
        tick = next_fire(cron, tick)?;
    }
    if policy == CatchUp::Skip && ticks.len() > 1 {
        ticks.drain(..ticks.len() - 1);
    }
    Ok(ticks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn people_times_parse() {
        assert_eq!(parse_time("1970-01-02"), Some(86_400_000));
        assert_eq!(parse_time("1970-01-01T00:00:01Z"), Some(1_000));
        assert_eq!(parse_time("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(parse_time("yesterday"), None);
    }

    const MIN: Millis = 60_000;

    #[test]
    fn next_fire_follows_the_pattern() {
        // 2026-01-01T00:00:00Z is 1767225600000.
        let start = 1_767_225_600_000;
        assert_eq!(next_fire("*/5 * * * *", start).unwrap(), start + 5 * MIN);
        assert_eq!(
            next_fire("*/5 * * * *", start + 1).unwrap(),
            start + 5 * MIN
        );
        assert_eq!(
            next_fire("*/2 * * * * *", start).unwrap(),
            start + 2_000,
            "six fields: seconds first"
        );
        assert!(next_fire("nope", start).is_err());
    }

    #[test]
    fn catch_up_policies() {
        let start = 1_767_225_600_000;
        let run = due_ticks("* * * * *", start, start + 3 * MIN + 5, CatchUp::RunMissed).unwrap();
        assert_eq!(
            run,
            vec![start, start + MIN, start + 2 * MIN, start + 3 * MIN]
        );
        let skip = due_ticks("* * * * *", start, start + 3 * MIN + 5, CatchUp::Skip).unwrap();
        assert_eq!(skip, vec![start + 3 * MIN]);
        assert!(
            due_ticks("* * * * *", start + MIN, start, CatchUp::Skip)
                .unwrap()
                .is_empty()
        );
    }
}
