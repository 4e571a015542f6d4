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

/// How a message is scored against an intent's examples (cosine similarities).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[non_exhaustive]
pub enum Scoring {
    /// The most similar example (the default): good with a few, varied examples per intent.
    #[default]
    Nearest,
    /// The mean of the `k` most similar examples: steadier with many examples per intent, as
    /// one stray example no longer decides alone.
    KNearest(usize),
    /// The similarity to the mean of the intent's examples.
    Centroid,
}

impl Scoring {
    /// The score of one intent from its examples' similarities to the message.
    fn score(self, similarities: &mut [f32], vectors: &[&[f32]], query: &[f32]) -> f32 {
        match self {
            Scoring::Nearest => similarities.iter().copied().fold(f32::MIN, f32::max),
            Scoring::KNearest(k) => {
                similarities.sort_by(|a, b| b.total_cmp(a));
                let top = &similarities[..k.max(1).min(similarities.len())];
                if top.is_empty() { f32::MIN } else { top.iter().sum::<f32>() / top.len() as f32 }
            }
            Scoring::Centroid => {
                let Some(first) = vectors.first() else { return f32::MIN };
                let mut mean = vec![0f32; first.len()];
                for v in vectors {
                    for (m, x) in mean.iter_mut().zip(v.iter()) {
                        *m += x;
                    }
                }
                cosine(query, &mean)
            }
        }
    }
}

struct IntentsInner {
    intents: Vec<(String, Vec<String>)>,
    scoring: Scoring,
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
                scoring: Scoring::Nearest,
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
                    scoring: old.scoring,
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

    /// How a message is scored against each intent's examples (default [`Scoring::Nearest`]).
    pub fn scoring(self, scoring: Scoring) -> Self {
        self.edit(|i| i.scoring = scoring)
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

    /// The intent of `text`: the best-scoring intent (by [`Scoring`]), or the unknown label when
    /// even that scores below the threshold.
    pub async fn classify(&self, text: &str) -> Result<IntentMatch, LlmError> {
        let examples = self.vectors().await?;
        let query = self.inner.embedder.embed(&[text]).await?.into_iter().next().unwrap_or_default();
        let best = (0..self.inner.intents.len())
            .filter_map(|intent| {
                let vectors: Vec<&[f32]> =
                    examples.iter().filter(|(i, _)| *i == intent).map(|(_, v)| v.as_slice()).collect();
                let mut similarities: Vec<f32> = vectors.iter().map(|v| cosine(&query, v)).collect();
                (!vectors.is_empty()).then(|| (intent, self.inner.scoring.score(&mut similarities, &vectors, &query)))
            })
            .max_by(|a, b| a.1.total_cmp(&b.1));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::EmbedFuture;

    /// Texts of the form "x,y" embed to the vector (x, y).
    struct Plane;

    impl Embedder for Plane {
        fn embed<'a>(&'a self, texts: &'a [&'a str]) -> EmbedFuture<'a> {
            let vectors =
                texts.iter().map(|t| t.split(',').map(|n| n.trim().parse().unwrap_or(0.0)).collect()).collect();
            Box::pin(async move { Ok(vectors) })
        }
        fn model_id(&self) -> String {
            "plane".into()
        }
    }

    /// "a" has one stray example right next to the query; "b" is close on average.
    fn intents(scoring: Scoring) -> Intents {
        Intents::new(Plane)
            .intent("a", ["1,0.05", "-1,1", "-1,-1"])
            .intent("b", ["1,0.3", "1,0.4", "1,0.5"])
            .scoring(scoring)
            .threshold(-1.0)
    }

    #[tokio::test]
    async fn scoring_decides_between_a_stray_example_and_a_close_group() {
        let query = "1,0";
        assert_eq!(intents(Scoring::Nearest).classify(query).await.unwrap().label, "a");
        assert_eq!(intents(Scoring::KNearest(2)).classify(query).await.unwrap().label, "b");
        assert_eq!(intents(Scoring::Centroid).classify(query).await.unwrap().label, "b");
        // k larger than the examples there are averages them all.
        assert_eq!(intents(Scoring::KNearest(10)).classify(query).await.unwrap().label, "b");
    }

    #[tokio::test]
    async fn below_the_threshold_is_the_unknown_label_with_the_closest_named() {
        let found = intents(Scoring::Centroid).threshold(0.99).unknown("standard").classify("1,0").await.unwrap();
        assert_eq!((found.label.as_str(), found.closest.as_deref()), ("standard", Some("b")));
    }
}
