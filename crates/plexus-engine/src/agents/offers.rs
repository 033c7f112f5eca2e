//! What agents offer besides their actions' calls: intent catalogue entries for `plexus
//! ask`, prompt templates for `llm` steps, and a generation number that says when either
//! may have changed.

use super::Agents;
use serde_json::Value as Json;

impl Agents {
    /// Every action as an intent catalogue entry: its intents as phrases; its agent's
    /// default intents, routing semantics and description as words for the lexical lane.
    pub fn intent_entries(&self) -> Vec<crate::intents::Entry> {
        let reg = self.lock();
        let mut seen = std::collections::BTreeSet::new();
        let mut out = Vec::new();
        for i in &reg.instances {
            // A model provider's `chat` is not something to ask for.
            if i.info.plugin_type == plexus_agent::wire::plugin_type::PROVIDER
                || !seen.insert(i.name.clone())
            {
                continue;
            }
            let agent_words: Vec<String> = std::iter::once(i.description.clone())
                .chain(
                    i.info
                        .default_intents
                        .iter()
                        .flat_map(|d| [d.pattern.replace(['{', '}'], " "), d.description.clone()]),
                )
                .collect();
            for a in i.actions.values() {
                let def = i.info.actions.iter().find(|d| d.id == a.id);
                let mut keywords = agent_words.clone();
                if let Some(r) = def.map(|d| &d.routing_semantics) {
                    keywords.extend(r.positive_use_cases.iter().cloned());
                    keywords.extend(r.accepted_intent_domains.iter().cloned());
                    keywords.push(r.capability_domain.clone());
                }
                let schema = &a.params.schema;
                let required: Vec<&str> = schema["required"]
                    .as_array()
                    .map(|r| r.iter().filter_map(Json::as_str).collect())
                    .unwrap_or_default();
                let inputs = schema["properties"]
                    .as_object()
                    .map(|props| {
                        props
                            .iter()
                            .map(|(name, p)| crate::intents::Input {
                                name: name.clone(),
                                ty: p["type"].as_str().unwrap_or("string").to_owned(),
                                required: required.contains(&name.as_str()),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(crate::intents::Entry {
                    kind: crate::intents::Kind::Action,
                    name: format!("{}/{}", i.name, a.id),
                    description: a.description.clone(),
                    phrases: a.intents.iter().map(|p| p.pattern.clone()).collect(),
                    keywords,
                    inputs,
                });
            }
        }
        out
    }

    /// The prompt template `name` (`agent/template`, or a template's name alone: the
    /// first agent's that has one) that an agent contributed in its Info; its content.
    pub fn prompt_template(&self, name: &str) -> Option<String> {
        let (agent, template) = match name.split_once('/') {
            Some((a, t)) => (Some(a), t),
            None => (None, name),
        };
        self.lock()
            .instances
            .iter()
            .filter(|i| agent.is_none_or(|a| a == i.name))
            .flat_map(|i| i.info.prompt_templates.iter())
            .find(|t| t.name == template)
            .map(|t| t.content.clone())
    }

    /// A number that changes whenever an agent registers or leaves (to know when an
    /// intent index built from [`Agents::intent_entries`] is stale).
    pub fn generation(&self) -> u64 {
        let reg = self.lock();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        use std::hash::{Hash, Hasher};
        for i in &reg.instances {
            i.name.hash(&mut h);
            i.instance_id.hash(&mut h);
            i.actions.len().hash(&mut h);
        }
        h.finish()
    }
}
