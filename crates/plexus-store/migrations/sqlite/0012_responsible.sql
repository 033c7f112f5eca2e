-- Who answers for a run's start, for `approvals.forbid_self_approval`: the caller who
-- started it, posted the event that started it, or created or last changed the schedule
-- or the workflow (`on:` trigger) that started it.
ALTER TABLE runs ADD COLUMN responsible TEXT NOT NULL DEFAULT '[]';
ALTER TABLE workflows ADD COLUMN applied_by TEXT;
ALTER TABLE schedules ADD COLUMN changed_by TEXT;
