-- One row per call of a model: who made it (a user, an API key, a run's step), which
-- provider and model answered, the tokens and what they cost by the price table then.
CREATE TABLE llm_usage (
    id INTEGER PRIMARY KEY,
    time INTEGER NOT NULL,
    actor TEXT,
    api_key TEXT,
    run_id TEXT,
    step_id TEXT,
    source TEXT NOT NULL,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL
);
CREATE INDEX llm_usage_time ON llm_usage (time);
CREATE INDEX llm_usage_run ON llm_usage (run_id);
CREATE INDEX llm_usage_actor ON llm_usage (actor, time);
