//! Intents: route a conversation turn by what the user wants.
//!
//! [`Intents`] compares the message with example utterances of each intent through an
//! [`Embedder`] (cosine similarity; the examples are embedded once, on first use) and falls
//! back to an explicit `unknown` label below a threshold. [`LlmIntents`] asks a model to pick
//! one label of a closed set. Both emit an `intent` event with the label and the score, so a
//! routing decision is never silent, and return the label for a router to return: in a
//! conversation (`crewflow-chat`), the label of a turn's first router is the turn's intent.
//!
//! ```no_run
//! # use crewflow_core::{FlowBuilder, Cx};
//! # use crewflow_llm::{HashEmbedder, Intents};
//! # #[derive(Default, serde::Serialize, serde::Deserialize)] struct Chat;
//! let intents = Intents::new(HashEmbedder::default())
//!     .intent("billing", ["my invoice is wrong", "refund my payment"])
//!     .intent("bug_report", ["the app crashes", "this button does nothing"])
//!     .threshold(0.3);
//! let labels = intents.labels();
//! let flow = FlowBuilder::<Chat>::new("support")
//!     .start_router("route", move |cx: Cx<Chat>, message: String| {
//!         let intents = intents.clone();
//!         async move { Ok(intents.route(&cx, &message).await?) }
//!     })
//!     .routes(labels);
//! ```

use std::sync::Arc;

use crewflow_core::Cx;
use tokio::sync::OnceCell;

use crate::Llm;
use crate::embed::{Embedder, cosine};
use crate::error::LlmError;

/// The label chosen for a message.
#[derive(Clone, Debug, PartialEq)]
pub struct IntentMatch {
    /// The intent (the unknown label when nothing was close enough).
    pub label: String,
    /// How sure: the best cosine similarity (embedder), 1 for a model's choice.
    pub score: f32,
    /// The closest intent even when it was below the threshold.
    pub closest: Option<String>,
}

struct IntentsInner {
    intents: Vec<(String, Vec<String>)>,
    threshold: f32,
    unknown: String,
    embedder: Arc<dyn Embedder>,
    /// (intent index, vector) per example, computed on first use.
    vectors: OnceCell<Vec<(usize, Vec<f32>)>>,
}

/// Intents by example utterances and an embedder. Cheap to clone.
#[derive(Clone)]
pub struct Intents {
    inner: Arc<IntentsInner>,
}

impl std::fmt::Debug for Intents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intents").field("labels", &self.labels()).field("threshold", &self.inner.threshold).finish()
    }
}

impl Intents {
    /// No intents yet; threshold 0.5; unknown label `unknown`.
    pub fn new(embedder: impl Embedder + 'static) -> Self {
        Self::with_embedder(Arc::new(embedder))
    }

    /// [`new`](Intents::new) with a shared embedder.
    pub fn with_embedder(embedder: Arc<dyn Embedder>) -> Self {
        Intents {
            inner: Arc::new(IntentsInner {
                intents: Vec::new(),
                threshold: 0.5,
                unknown: "unknown".into(),
                embedder,
                vectors: OnceCell::new(),
            }),
        }
    }

    fn edit(mut self, change: impl FnOnce(&mut IntentsInner)) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => {
                change(inner);
                inner.vectors = OnceCell::new();
                self
            }
            None => {
                // Shared already: rebuild (configuration happens before use, so this is rare).
                let old = &self.inner;
                let mut inner = IntentsInner {
                    intents: old.intents.clone(),
                    threshold: old.threshold,
                    unknown: old.unknown.clone(),
                    embedder: old.embedder.clone(),
                    vectors: OnceCell::new(),
                };
                change(&mut inner);
                Intents { inner: Arc::new(inner) }
            }
        }
    }

    /// Adds an intent with example utterances.
    pub fn intent<E: Into<String>>(self, label: impl Into<String>, examples: impl IntoIterator<Item = E>) -> Self {
        let (label, examples) = (label.into(), examples.into_iter().map(Into::into).collect());
        self.edit(|i| i.intents.push((label, examples)))
    }

    /// The lowest cosine similarity that counts as a match (default 0.5; depends on the
    /// embedder: MiniLM puts related sentences around 0.4–0.8).
    pub fn threshold(self, threshold: f32) -> Self {
        self.edit(|i| i.threshold = threshold)
    }

    /// The label of messages close to no intent (default `unknown`).
    pub fn unknown(self, label: impl Into<String>) -> Self {
        let label = label.into();
        self.edit(|i| i.unknown = label)
    }

    /// Every label a classification can return, the unknown label last: the router's routes.
    pub fn labels(&self) -> Vec<String> {
        let mut labels: Vec<String> = self.inner.intents.iter().map(|(l, _)| l.clone()).collect();
        labels.push(self.inner.unknown.clone());
        labels
    }

    async fn vectors(&self) -> Result<&Vec<(usize, Vec<f32>)>, LlmError> {
        self.inner
            .vectors
            .get_or_try_init(|| async {
                let texts: Vec<(usize, &str)> = self
                    .inner
                    .intents
                    .iter()
                    .enumerate()
                    .flat_map(|(i, (_, ex))| ex.iter().map(move |e| (i, e.as_str())))
                    .collect();
                let strs: Vec<&str> = texts.iter().map(|(_, t)| *t).collect();
                let vectors = self.inner.embedder.embed(&strs).await?;
                Ok(texts.iter().map(|(i, _)| *i).zip(vectors).collect())
            })
            .await
    }

    /// The intent of `text`: the intent of the most similar example, or the unknown label when
    /// even that is below the threshold.
    pub async fn classify(&self, text: &str) -> Result<IntentMatch, LlmError> {
        let examples = self.vectors().await?;
        let query = self.inner.embedder.embed(&[text]).await?.into_iter().next().unwrap_or_default();
        let best = examples.iter().map(|(i, v)| (*i, cosine(&query, v))).max_by(|a, b| a.1.total_cmp(&b.1));
        let closest = best.map(|(i, _)| self.inner.intents[i].0.clone());
        Ok(match best {
            Some((i, score)) if score >= self.inner.threshold => {
                IntentMatch { label: self.inner.intents[i].0.clone(), score, closest }
            }
            other => IntentMatch { label: self.inner.unknown.clone(), score: other.map_or(0.0, |b| b.1), closest },
        })
    }

    /// Classifies `text` and emits an `intent` event (label, score, closest intent); returns
    /// the label, for a router to return.
    pub async fn route<S: Send + Sync + 'static>(&self, cx: &Cx<S>, text: &str) -> Result<String, LlmError> {
        let found = self.classify(text).await?;
        record(cx, &found);
        Ok(found.label)
    }
}

fn record<S: Send + Sync + 'static>(cx: &Cx<S>, found: &IntentMatch) {
    cx.emit("intent", serde_json::json!({ "label": found.label, "score": found.score, "closest": found.closest }));
}

/// Intents chosen by a model from a closed set of labels (one model call per turn).
#[derive(Clone, Debug)]
pub struct LlmIntents {
    llm: Llm,
    labels: Vec<String>,
}

impl LlmIntents {
    /// A model choosing among `labels`.
    pub fn new<L: Into<String>>(llm: Llm, labels: impl IntoIterator<Item = L>) -> Self {
        LlmIntents { llm, labels: labels.into_iter().map(Into::into).collect() }
    }

    /// The labels: the router's routes.
    pub fn labels(&self) -> Vec<String> {
        self.labels.clone()
    }

    /// The label the model picks for `text`. A reply naming no label is an error
    /// ([`LlmError::InvalidOutput`]), never a silent default.
    pub async fn classify(&self, text: &str) -> Result<IntentMatch, LlmError> {
        let labels: Vec<&str> = self.labels.iter().map(String::as_str).collect();
        let label = self.llm.classify(text, &labels).await?;
        Ok(IntentMatch { label: label.clone(), score: 1.0, closest: Some(label) })
    }

    /// Classifies `text` and emits an `intent` event; returns the label, for a router to
    /// return.
    pub async fn route<S: Send + Sync + 'static>(&self, cx: &Cx<S>, text: &str) -> Result<String, LlmError> {
        let found = self.classify(text).await?;
        record(cx, &found);
        Ok(found.label)
    }
}
