//! Routing a request: the chosen provider first, then its fallbacks in order. A provider
//! is retried with backoff on rate limits (429, honouring `Retry-After`), server errors
//! (5xx), timeouts and lost connections; other errors (a bad key, a bad request) go
//! straight to the next provider. A provider that failed [`BREAK_AFTER`] times in a row
//! is skipped for [`BREAK_FOR`] (a circuit breaker) and shown unhealthy.

use crate::stream::Deltas;
use crate::{ChatRequest, ChatResponse, Provider, ProviderError, Providers};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
// Tokio's clock, so that tests can move it.
use tokio::time::Instant;

/// Tries of one provider for one request.
pub const TRIES: u32 = 3;
/// Consecutive failures that open a provider's circuit.
pub const BREAK_AFTER: u32 = 5;
/// How long an open circuit skips its provider.
pub const BREAK_FOR: Duration = Duration::from_secs(30);
/// The longest wait between tries (a larger `Retry-After` moves to the next provider).
const MAX_WAIT: Duration = Duration::from_secs(30);

/// Each provider's run of failures.
#[derive(Default)]
pub struct Breakers {
    state: Mutex<HashMap<String, (u32, Option<Instant>)>>,
}

impl Breakers {
    fn open(&self, name: &str) -> bool {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state
            .get(name)
            .and_then(|(_, until)| *until)
            .is_some_and(|until| Instant::now() < until)
    }

    fn failed(&self, name: &str) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let entry = state.entry(name.to_owned()).or_default();
        entry.0 += 1;
        if entry.0 >= BREAK_AFTER {
            entry.1 = Some(Instant::now() + BREAK_FOR);
            tracing::warn!(
                provider = name,
                failures = entry.0,
                "provider skipped for a while"
            );
        }
    }

    fn succeeded(&self, name: &str) {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }

    /// Whether a provider is skipped now.
    pub fn is_open(&self, name: &str) -> bool {
        self.open(name)
    }

    /// How many times in a row a provider has failed (0 after a success).
    pub fn failures(&self, name: &str) -> u32 {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .map_or(0, |(n, _)| *n)
    }
}

fn retryable(e: &ProviderError) -> Option<Option<Duration>> {
    match e {
        ProviderError::Http {
            status,
            retry_after,
            ..
        } if *status == 429 || *status >= 500 => Some(*retry_after),
        ProviderError::Timeout(_) | ProviderError::Transport(_) => Some(None),
        _ => None,
    }
}

impl Providers {
    /// Sends `request` to `first` (or the default), then to each of `fallbacks`, as the
    /// module says; the provider that answered and its answer, or every failure.
    pub async fn chat_routed(
        &self,
        first: Option<&str>,
        fallbacks: &[String],
        request: ChatRequest,
    ) -> Result<(String, ChatResponse), String> {
        self.routed(first, fallbacks, |p| {
            let request = request.clone();
            Box::pin(async move { p.chat(request).await })
        })
        .await
    }

    /// [`Providers::chat_routed`] for a streamed reply: routed until a stream opens (a
    /// failure after its first piece is the caller's to report).
    pub async fn stream_routed(
        &self,
        first: Option<&str>,
        fallbacks: &[String],
        request: ChatRequest,
    ) -> Result<(String, Deltas), String> {
        self.routed(first, fallbacks, |p| {
            let request = request.clone();
            Box::pin(async move { p.chat_stream(request).await })
        })
        .await
    }

    /// Embeddings from `first` (or the default), retried and skipped as chat calls are.
    pub async fn embed_routed(
        &self,
        first: Option<&str>,
        model: Option<String>,
        inputs: Vec<String>,
        timeout: Duration,
    ) -> Result<(String, crate::Embeddings), String> {
        self.routed(first, &[], |p| {
            let (model, inputs) = (model.clone(), inputs.clone());
            Box::pin(async move { p.embed(model, inputs, timeout).await })
        })
        .await
    }

    async fn routed<T>(
        &self,
        first: Option<&str>,
        fallbacks: &[String],
        attempt: impl Fn(Arc<dyn Provider>) -> Attempt<T>,
    ) -> Result<(String, T), String> {
        let mut order = vec![self.pick(first)?];
        for name in fallbacks {
            order.push(self.pick(Some(name))?);
        }
        let mut failures = Vec::new();
        for (name, provider) in order {
            if self.breakers.is_open(&name) {
                failures.push(format!(
                    "provider `{name}`: skipped after repeated failures"
                ));
                continue;
            }
            let mut backoff = Duration::from_millis(500);
            for tried in 1..=TRIES {
                let started = std::time::Instant::now();
                let result = attempt(provider.clone()).await;
                let outcome = if result.is_ok() { "success" } else { "failure" };
                metrics::histogram!("plexus_llm_request_seconds", "provider" => name.clone(), "outcome" => outcome)
                    .record(started.elapsed().as_secs_f64());
                match result {
                    Ok(reply) => {
                        self.breakers.succeeded(&name);
                        return Ok((name, reply));
                    }
                    Err(e) => {
                        self.breakers.failed(&name);
                        let wait = retryable(&e).map(|after| after.unwrap_or(backoff));
                        tracing::info!(provider = %name, attempt = tried, error = %e, ?wait, "LLM call failed");
                        failures.push(format!("provider `{name}`: {e}"));
                        match wait {
                            Some(w) if tried < TRIES && w <= MAX_WAIT => {
                                tokio::time::sleep(w).await;
                                backoff *= 2;
                            }
                            _ => break,
                        }
                    }
                }
            }
        }
        Err(failures.join("; "))
    }
}

/// One try of one provider.
type Attempt<T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, ProviderError>> + Send>>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Reply, Usage};
    use std::collections::BTreeMap;

    /// Answers from a script of results.
    struct Scripted(Mutex<Vec<Result<&'static str, ProviderError>>>, Mutex<u32>);

    impl Provider for Scripted {
        fn default_model(&self) -> &str {
            "m"
        }
        fn chat(&self, _r: ChatRequest) -> Reply<'_> {
            *self.1.lock().unwrap() += 1;
            let next = self.0.lock().unwrap().remove(0);
            Box::pin(async move {
                next.map(|content| ChatResponse {
                    content: content.to_owned(),
                    tool_calls: Vec::new(),
                    model: "m".into(),
                    finish_reason: "stop".into(),
                    usage: Usage::default(),
                })
            })
        }
    }

    fn http(status: u16, retry_after: Option<u64>) -> ProviderError {
        ProviderError::Http {
            status,
            message: "no".into(),
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    fn providers(
        script: Vec<(&str, Vec<Result<&'static str, ProviderError>>)>,
    ) -> (Providers, Vec<Arc<Scripted>>) {
        let p = Providers::default();
        let mut all = BTreeMap::new();
        let mut handles = Vec::new();
        for (name, results) in script {
            let s = Arc::new(Scripted(Mutex::new(results), Mutex::new(0)));
            handles.push(s.clone());
            all.insert(name.to_owned(), s as Arc<dyn Provider>);
        }
        p.set(all, Some("a".into()));
        (p, handles)
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limits_are_waited_out_as_the_provider_asks() {
        let (p, h) = providers(vec![("a", vec![Err(http(429, Some(7))), Ok("fine")])]);
        let started = tokio::time::Instant::now();
        let (name, reply) = p
            .chat_routed(None, &[], ChatRequest::default())
            .await
            .unwrap();
        assert_eq!((name.as_str(), reply.content.as_str()), ("a", "fine"));
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(7),
            "Retry-After honoured"
        );
        assert_eq!(*h[0].1.lock().unwrap(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_provider_falls_back_and_a_bad_key_is_not_retried() {
        let (p, h) = providers(vec![
            (
                "a",
                vec![
                    Err(http(500, None)),
                    Err(http(502, None)),
                    Err(http(503, None)),
                ],
            ),
            ("b", vec![Err(http(401, None))]),
            ("c", vec![Ok("from c")]),
        ]);
        let (name, _) = p
            .chat_routed(None, &["b".into(), "c".into()], ChatRequest::default())
            .await
            .unwrap();
        assert_eq!(name, "c");
        assert_eq!(*h[0].1.lock().unwrap(), TRIES, "5xx retried");
        assert_eq!(*h[1].1.lock().unwrap(), 1, "401 not retried");
        let (p, _) = providers(vec![("a", vec![Err(http(400, None))])]);
        let e = p
            .chat_routed(None, &[], ChatRequest::default())
            .await
            .unwrap_err();
        assert!(e.contains("provider `a`: the provider answered 400"), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_provider_that_keeps_failing_is_skipped_for_a_while() {
        let failing: Vec<Result<&'static str, ProviderError>> =
            (0..10).map(|_| Err(http(400, None))).collect();
        let (p, h) = providers(vec![
            ("a", failing),
            ("b", (0..10).map(|_| Ok("b")).collect()),
        ]);
        for _ in 0..BREAK_AFTER {
            p.chat_routed(None, &["b".into()], ChatRequest::default())
                .await
                .unwrap();
        }
        assert!(p.breakers.is_open("a"));
        let calls = *h[0].1.lock().unwrap();
        p.chat_routed(None, &["b".into()], ChatRequest::default())
            .await
            .unwrap();
        assert_eq!(*h[0].1.lock().unwrap(), calls, "skipped while open");
        tokio::time::advance(BREAK_FOR + Duration::from_secs(1)).await;
        assert!(!p.breakers.is_open("a"), "tried again after a while");
    }
}
