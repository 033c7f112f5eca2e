//! Streamed replies: a model's answer as it is written, piece by piece.
//!
//! [`crate::Provider::chat_stream`] opens a stream (errors before the first piece are the
//! provider's answer to the request, and routed like any call's); each [`Delta`] is a
//! piece of text or of a tool call; [`Delta::End`] closes it with the reason and usage.

use crate::{ChatResponse, ProviderError, ToolCall, Usage};
use futures_util::Stream;
use std::future::Future;
use std::pin::Pin;

/// One piece of a streamed reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Delta {
    Text(String),
    /// A piece of the tool call at `index`: its id and name come with its first piece,
    /// its arguments in pieces.
    ToolCall {
        index: usize,
        id: String,
        name: String,
        arguments: String,
    },
    End {
        finish_reason: String,
        usage: Usage,
        model: String,
    },
}

/// A reply being streamed.
pub type Deltas = Pin<Box<dyn Stream<Item = Result<Delta, ProviderError>> + Send>>;

/// A stream being opened.
pub type Opening<'a> = Pin<Box<dyn Future<Output = Result<Deltas, ProviderError>> + Send + 'a>>;

/// A whole reply as a stream: its text, its tool calls, its end (for providers that do
/// not stream).
pub fn of_reply(reply: ChatResponse) -> Deltas {
    let mut pieces = Vec::new();
    if !reply.content.is_empty() {
        pieces.push(Ok(Delta::Text(reply.content)));
    }
    for (index, c) in reply.tool_calls.into_iter().enumerate() {
        pieces.push(Ok(Delta::ToolCall {
            index,
            id: c.id,
            name: c.name,
            arguments: c.arguments,
        }));
    }
    pieces.push(Ok(Delta::End {
        finish_reason: reply.finish_reason,
        usage: reply.usage,
        model: reply.model,
    }));
    Box::pin(futures_util::stream::iter(pieces))
}

/// Puts a streamed reply back together.
#[derive(Default)]
pub struct Assembled {
    pub content: String,
    pub tool_calls: Vec<ToolCall>,
    pub finish_reason: String,
    pub usage: Usage,
    pub model: String,
}

impl Assembled {
    pub fn add(&mut self, delta: &Delta) {
        match delta {
            Delta::Text(t) => self.content.push_str(t),
            Delta::ToolCall {
                index,
                id,
                name,
                arguments,
            } => {
                while self.tool_calls.len() <= *index {
                    self.tool_calls.push(ToolCall {
                        id: String::new(),
                        name: String::new(),
                        arguments: String::new(),
                    });
                }
                let c = &mut self.tool_calls[*index];
                if !id.is_empty() {
                    c.id.clone_from(id);
                }
                if !name.is_empty() {
                    c.name.clone_from(name);
                }
                c.arguments.push_str(arguments);
            }
            Delta::End {
                finish_reason,
                usage,
                model,
            } => {
                self.finish_reason.clone_from(finish_reason);
                self.usage = *usage;
                self.model.clone_from(model);
            }
        }
    }
}
