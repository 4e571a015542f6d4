//! Memory for crewflow: [`Memory`] remembers texts, recalls them by meaning, recency and
//! importance, and forgets them; [`Lessons`] learns from human review
//! ([`HumanFeedback::learn`](crewflow_core::HumanFeedback::learn)).
//!
//! Memories live in the run store ([`SqliteStore`](crewflow_store::SqliteStore) or
//! `PostgresStore`, table `crewflow_memories`), with their
//! embedding and the id of the model that made it. Recall embeds the query, reads the rows of
//! the scope and ranks them:
//!
//! ```text
//! score = semantic_weight * max(cosine, 0)                       (0.5)
//!       + recency_weight  * 0.5 ^ (age_days / half_life_days)    (0.3, half-life 30 days)
//!       + importance_weight * importance                         (0.2)
//! ```
//!
//! ```
//! use crewflow_llm::HashEmbedder;
//! use crewflow_memory::{Memory, RecallOptions, RememberOptions};
//! use crewflow_store::SqliteStore;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! // Nothing is opened until the first call.
//! let memory = Memory::new(SqliteStore::in_memory(), HashEmbedder::default()).root_scope("/flow/invoice");
//! memory.remember("The ACME invoices are due in 45 days", RememberOptions::new().scope("customers")).await?;
//! let found = memory.recall("when are ACME invoices due", RecallOptions::new().limit(3)).await?;
//! assert_eq!(found[0].record.scope, "/flow/invoice/customers");
//! # Ok::<(), crewflow_memory::MemoryError>(()) }).unwrap();
//! ```
//!
//! See `docs/memory.md` for the storage, the scale (brute-force ranking) and lessons.

mod error;
mod lessons;

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use crewflow_llm::{ChatRequest, Embedder, Llm, Message, cosine};
use crewflow_store::{MemoryQuery, MemoryRow, MemoryStore, ModelCount};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

pub use error::MemoryError;
pub use lessons::Lessons;

/// `Result` with [`MemoryError`].
pub type Result<T, E = MemoryError> = std::result::Result<T, E>;

/// The importance of a memory remembered without one.
pub const DEFAULT_IMPORTANCE: f32 = 0.5;

/// How recall ranks: the weights of meaning, recency and importance, and how fast recency
/// fades. The defaults are CrewAI's: 0.5 / 0.3 / 0.2, a half-life of 30 days.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scoring {
    /// The weight of the cosine similarity to the query (negative similarity counts as 0).
    pub semantic_weight: f32,
    /// The weight of recency: `0.5 ^ (age_days / half_life_days)`, from `created_at`.
    pub recency_weight: f32,
    /// The weight of the memory's importance.
    pub importance_weight: f32,
    /// The age at which recency counts half.
    pub half_life_days: f64,
}

impl Default for Scoring {
    fn default() -> Self {
        Scoring { semantic_weight: 0.5, recency_weight: 0.3, importance_weight: 0.2, half_life_days: 30.0 }
    }
}

impl Scoring {
    /// Recency of a memory of this age: 1 when new, 0.5 at the half-life.
    pub fn recency(&self, age: chrono::Duration) -> f32 {
        let days = (age.num_milliseconds().max(0) as f64) / 86_400_000.0;
        if self.half_life_days <= 0.0 {
            return if days == 0.0 { 1.0 } else { 0.0 };
        }
        0.5f64.powf(days / self.half_life_days) as f32
    }
}

/// A remembered text.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemoryRecord {
    /// Its id (UUID v7: ordered by creation).
    pub id: Uuid,
    /// The text.
    pub content: String,
    /// Its scope: a path such as `/flow/invoice/lessons`.
    pub scope: String,
    /// Its categories.
    pub categories: Vec<String>,
    /// Free metadata.
    pub metadata: Map<String, Value>,
    /// How much it matters, 0 to 1.
    pub importance: f32,
    /// When it was remembered.
    pub created_at: DateTime<Utc>,
    /// When it was last recalled.
    pub last_accessed: DateTime<Utc>,
    /// Where it came from (`hitl` for lessons from human review).
    pub source: Option<String>,
    /// The embedding model's id.
    pub model: String,
}

/// A recalled memory and how well it matched.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemoryMatch {
    /// The memory.
    pub record: MemoryRecord,
    /// The blended score (see [`Scoring`]); higher is better.
    pub score: f32,
    /// Its similarity to the query (cosine, at least 0).
    pub semantic: f32,
    /// Its recency, 0 to 1.
    pub recency: f32,
}

/// How to remember: the scope (under the memory's root), categories, metadata, importance
/// and source.
///
/// ```
/// use crewflow_memory::RememberOptions;
/// let o = RememberOptions::new().scope("lessons/draft").category("style").importance(0.9).source("hitl");
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RememberOptions {
    /// The scope under the root (default: the root itself).
    pub scope: Option<String>,
    /// Categories.
    pub categories: Vec<String>,
    /// Metadata.
    pub metadata: Map<String, Value>,
    /// 0 to 1 (default [`DEFAULT_IMPORTANCE`]).
    pub importance: Option<f32>,
    /// Where it came from.
    pub source: Option<String>,
}

impl RememberOptions {
    /// No options: the root scope, default importance.
    pub fn new() -> Self {
        Self::default()
    }
    /// The scope under the memory's root.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }
    /// Adds a category.
    pub fn category(mut self, category: impl Into<String>) -> Self {
        self.categories.push(category.into());
        self
    }
    /// Sets a metadata entry.
    pub fn meta(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }
    /// How much it matters, 0 to 1.
    pub fn importance(mut self, importance: f32) -> Self {
        self.importance = Some(importance);
        self
    }
    /// Where it came from.
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.source = Some(source.into());
        self
    }
}

/// What to recall: a scope (and everything under it), categories (any of them), a source,
/// how many.
#[derive(Clone, Debug, PartialEq)]
pub struct RecallOptions {
    /// The scope under the root (default: the whole root).
    pub scope: Option<String>,
    /// Only memories with one of these categories (when not empty).
    pub categories: Vec<String>,
    /// Only memories of this source.
    pub source: Option<String>,
    /// At most this many (default 10).
    pub limit: usize,
}

impl Default for RecallOptions {
    fn default() -> Self {
        RecallOptions { scope: None, categories: Vec::new(), source: None, limit: 10 }
    }
}

impl RecallOptions {
    /// The whole root, 10 at most.
    pub fn new() -> Self {
        Self::default()
    }
    /// The scope under the root.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }
    /// Adds a category (memories with any of them match).
    pub fn category(mut self, category: impl Into<String>) -> Self {
        self.categories.push(category.into());
        self
    }
    /// Only memories of this source.
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.source = Some(source.into());
        self
    }
    /// At most this many.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }
}

/// Which memories [`Memory::forget`] and [`Memory::find`] take. Every condition set must
/// hold; the empty filter takes every memory under the root.
///
/// ```
/// use crewflow_memory::MemoryFilter;
/// let stale = MemoryFilter::new().scope("drafts").older_than(chrono::Utc::now() - chrono::Duration::days(90));
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MemoryFilter {
    /// The scope under the root (and everything under it).
    pub scope: Option<String>,
    /// Memories with any of these categories.
    pub categories: Vec<String>,
    /// Memories of this source.
    pub source: Option<String>,
    /// Memories created before this.
    pub older_than: Option<DateTime<Utc>>,
    /// These memories.
    pub ids: Vec<Uuid>,
    /// Memories whose metadata holds every one of these entries.
    pub metadata: Map<String, Value>,
    /// Memories embedded by this model.
    pub model: Option<String>,
}

impl MemoryFilter {
    /// Every memory under the root.
    pub fn new() -> Self {
        Self::default()
    }
    /// The scope under the root.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }
    /// Adds a category (memories with any of them match).
    pub fn category(mut self, category: impl Into<String>) -> Self {
        self.categories.push(category.into());
        self
    }
    /// Memories of this source.
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.source = Some(source.into());
        self
    }
    /// Memories created before `t`.
    pub fn older_than(mut self, t: DateTime<Utc>) -> Self {
        self.older_than = Some(t);
        self
    }
    /// Adds an id.
    pub fn id(mut self, id: Uuid) -> Self {
        self.ids.push(id);
        self
    }
    /// Memories whose metadata has `key` equal to `value`.
    pub fn meta(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }
    /// Memories embedded by `model`.
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    fn post_filtered(&self) -> bool {
        !self.categories.is_empty() || !self.metadata.is_empty()
    }

    fn keeps(&self, row: &MemoryRow) -> bool {
        any_category(&self.categories, &row.categories)
            && self.metadata.iter().all(|(k, v)| row.metadata.get(k) == Some(v))
    }
}

fn any_category(wanted: &[String], has: &[String]) -> bool {
    wanted.is_empty() || wanted.iter().any(|c| has.contains(c))
}

type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

#[derive(Clone)]
struct Inner {
    store: Arc<dyn MemoryStore>,
    embedder: Arc<dyn Embedder>,
    root: String,
    scoring: Scoring,
    clock: Clock,
    llm: Option<Llm>,
    /// The embedder's vector length, once checked against the store.
    checked_dimensions: Arc<tokio::sync::OnceCell<usize>>,
}

/// Remembers texts and recalls them by meaning, recency and importance (see the crate docs).
/// Cheap to clone; clones share the store and embedder. Nothing is opened until used.
#[derive(Clone)]
pub struct Memory {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memory")
            .field("store", &self.inner.store.describe())
            .field("embedder", &self.inner.embedder.model_id())
            .field("root", &self.inner.root)
            .field("scoring", &self.inner.scoring)
            .finish()
    }
}

impl Memory {
    /// A memory in `store` (a [`SqliteStore`](crewflow_store::SqliteStore) or
    /// `PostgresStore`, usually the flow's run store),
    /// embedding with `embedder`, rooted at `/`.
    pub fn new(store: impl MemoryStore, embedder: impl Embedder + 'static) -> Self {
        Self::from_arcs(Arc::new(store), Arc::new(embedder))
    }

    /// [`new`](Memory::new), shared.
    pub fn from_arcs(store: Arc<dyn MemoryStore>, embedder: Arc<dyn Embedder>) -> Self {
        Memory {
            inner: Arc::new(Inner {
                store,
                embedder,
                root: "/".into(),
                scoring: Scoring::default(),
                clock: Arc::new(Utc::now),
                llm: None,
                checked_dimensions: Arc::new(tokio::sync::OnceCell::new()),
            }),
        }
    }

    fn with(mut self, f: impl FnOnce(&mut Inner)) -> Self {
        f(Arc::make_mut(&mut self.inner));
        self
    }

    /// Roots every scope of this memory under `root` (e.g. `/flow/invoice`): remembered
    /// scopes are joined to it, recall and forget never reach outside it.
    pub fn root_scope(self, root: &str) -> Self {
        let root = join("/", Some(root));
        self.with(|i| i.root = root)
    }

    /// This memory's root scope.
    pub fn root(&self) -> &str {
        &self.inner.root
    }

    /// The same memory under a sub-scope of its root.
    pub fn scoped(&self, scope: &str) -> Self {
        let root = join(&self.inner.root, Some(scope));
        self.clone().with(|i| i.root = root)
    }

    /// How recall ranks (default [`Scoring::default`]).
    pub fn scoring(self, scoring: Scoring) -> Self {
        self.with(|i| i.scoring = scoring)
    }

    /// The clock for creation and access times and for recency (default: the system clock).
    pub fn clock(self, clock: impl Fn() -> DateTime<Utc> + Send + Sync + 'static) -> Self {
        self.with(|i| i.clock = Arc::new(clock))
    }

    /// The model [`extract_memories`](Memory::extract_memories) uses.
    pub fn llm(self, llm: Llm) -> Self {
        self.with(|i| i.llm = Some(llm))
    }

    /// The embedder's model id.
    pub fn model_id(&self) -> String {
        self.inner.embedder.model_id()
    }

    /// The full scope path of `scope` under the root.
    pub fn scope_path(&self, scope: Option<&str>) -> String {
        join(&self.inner.root, scope)
    }

    fn store_error(&self, action: &'static str) -> impl FnOnce(crewflow_core::BoxError) -> MemoryError + '_ {
        move |source| MemoryError::Store { store: self.inner.store.describe(), action, source }
    }

    async fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let model = self.inner.embedder.model_id();
        let vectors = self
            .inner
            .embedder
            .embed(texts)
            .await
            .map_err(|source| MemoryError::Embed { model: model.clone(), source })?;
        if vectors.len() != texts.len() {
            let problem = format!("returned {} vectors for {} texts", vectors.len(), texts.len());
            return Err(MemoryError::BadEmbedding { model, problem });
        }
        if let Some(v) = vectors.iter().find(|v| v.is_empty() || v.iter().any(|x| !x.is_finite())) {
            let problem = format!("returned an unusable vector ({} values, or not finite)", v.len());
            return Err(MemoryError::BadEmbedding { model, problem });
        }
        Ok(vectors)
    }

    /// Checks once per memory that the store's vectors of this model have this length.
    async fn check_dimensions(&self, got: usize) -> Result<()> {
        let model = self.inner.embedder.model_id();
        let stored = *self
            .inner
            .checked_dimensions
            .get_or_try_init(|| async {
                let q = MemoryQuery { model: Some(model.clone()), ..MemoryQuery::default() };
                let models = self.inner.store.memory_models(&q).await.map_err(self.store_error("read its models"))?;
                Ok::<usize, MemoryError>(models.first().map_or(got, |m| m.dimensions))
            })
            .await?;
        if stored != got {
            return Err(MemoryError::DimensionMismatch { model, stored, got });
        }
        Ok(())
    }

    /// Remembers `content`: embeds it and stores it. Returns the stored record.
    pub async fn remember(&self, content: &str, options: RememberOptions) -> Result<MemoryRecord> {
        let mut records = self.remember_many(&[content], options).await?;
        records.pop().ok_or_else(|| MemoryError::Corrupt("nothing was stored".into()))
    }

    /// Remembers several texts with the same options: one embedding call, one transaction
    /// (all are stored, or none).
    pub async fn remember_many<T: AsRef<str>>(
        &self,
        contents: &[T],
        options: RememberOptions,
    ) -> Result<Vec<MemoryRecord>> {
        let texts: Vec<&str> = contents.iter().map(|c| c.as_ref().trim()).collect();
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        if texts.iter().any(|t| t.is_empty()) {
            return Err(MemoryError::EmptyContent);
        }
        let importance = options.importance.unwrap_or(DEFAULT_IMPORTANCE);
        if !(0.0..=1.0).contains(&importance) {
            return Err(MemoryError::InvalidImportance(importance));
        }
        let vectors = self.embed(&texts).await?;
        self.check_dimensions(vectors[0].len()).await?;
        if let Some(v) = vectors.iter().find(|v| v.len() != vectors[0].len()) {
            let (model, stored, got) = (self.model_id(), vectors[0].len(), v.len());
            return Err(MemoryError::DimensionMismatch { model, stored, got });
        }
        let scope = self.scope_path(options.scope.as_deref());
        let now = (self.inner.clock)();
        let model = self.model_id();
        let rows: Vec<MemoryRow> = texts
            .iter()
            .zip(vectors)
            .map(|(text, embedding)| MemoryRow {
                id: Uuid::now_v7().to_string(),
                content: text.to_string(),
                scope: scope.clone(),
                categories: options.categories.clone(),
                metadata: Value::Object(options.metadata.clone()),
                importance,
                created_at: now,
                last_accessed: now,
                source: options.source.clone(),
                model: model.clone(),
                embedding,
            })
            .collect();
        self.inner.store.insert_memories(&rows).await.map_err(self.store_error("store memories"))?;
        rows.into_iter().map(record).collect()
    }

    /// The memories most relevant to `query`, best first (see [`Scoring`]). Only memories
    /// embedded by this memory's model are compared; finding another model's memories in the
    /// scope is an error ([`MemoryError::ModelMismatch`]). Recalled memories have their
    /// `last_accessed` updated (it does not affect ranking).
    pub async fn recall(&self, query: &str, options: RecallOptions) -> Result<Vec<MemoryMatch>> {
        let scope = self.scope_path(options.scope.as_deref());
        let q = MemoryQuery {
            scope_prefix: Some(scope.clone()),
            source: options.source.clone(),
            with_embeddings: true,
            unordered: true,
            ..MemoryQuery::default()
        };
        let rows = self.inner.store.query_memories(&q).await.map_err(self.store_error("read memories"))?;
        let rows: Vec<MemoryRow> =
            rows.into_iter().filter(|r| any_category(&options.categories, &r.categories)).collect();
        if rows.is_empty() || options.limit == 0 {
            return Ok(Vec::new()); // nothing to compare: the embedder is not even asked
        }
        let model = self.model_id();
        if let Some(other) = rows.iter().find(|r| r.model != model) {
            let count = rows.iter().filter(|r| r.model == other.model).count() as u64;
            return Err(MemoryError::ModelMismatch { scope, stored: other.model.clone(), count, embedder: model });
        }
        let query_vector = self.embed(&[query]).await?.pop().unwrap_or_default();
        if let Some(bad) = rows.iter().find(|r| r.embedding.len() != query_vector.len()) {
            let (stored, got) = (bad.embedding.len(), query_vector.len());
            return Err(MemoryError::DimensionMismatch { model, stored, got });
        }
        let now = (self.inner.clock)();
        let s = self.inner.scoring;
        let mut scored: Vec<(f32, f32, f32, MemoryRow)> = rows
            .into_iter()
            .map(|row| {
                let semantic = cosine(&query_vector, &row.embedding).max(0.0);
                let recency = s.recency(now - row.created_at);
                let score =
                    s.semantic_weight * semantic + s.recency_weight * recency + s.importance_weight * row.importance;
                (score, semantic, recency, row)
            })
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| b.3.created_at.cmp(&a.3.created_at)));
        scored.truncate(options.limit);
        let ids: Vec<String> = scored.iter().map(|m| m.3.id.clone()).collect();
        self.inner.store.touch_memories(&ids, now).await.map_err(self.store_error("touch recalled memories"))?;
        scored
            .into_iter()
            .map(|(score, semantic, recency, mut row)| {
                row.last_accessed = now;
                Ok(MemoryMatch { record: record(row)?, score, semantic, recency })
            })
            .collect()
    }

    /// The memories in `scope` (under the root, and below it), newest first.
    pub async fn list(&self, scope: &str, limit: u64, offset: u64) -> Result<Vec<MemoryRecord>> {
        let q = MemoryQuery {
            scope_prefix: Some(self.scope_path(Some(scope))),
            limit: Some(limit),
            offset,
            ..MemoryQuery::default()
        };
        let rows = self.inner.store.query_memories(&q).await.map_err(self.store_error("list memories"))?;
        rows.into_iter().map(record).collect()
    }

    /// The memories `filter` takes, newest first.
    pub async fn find(&self, filter: &MemoryFilter) -> Result<Vec<MemoryRecord>> {
        let rows =
            self.inner.store.query_memories(&self.query(filter)).await.map_err(self.store_error("find memories"))?;
        rows.into_iter().filter(|r| filter.keeps(r)).map(record).collect()
    }

    /// Forgets the memories `filter` takes (never outside the root); returns how many.
    pub async fn forget(&self, filter: &MemoryFilter) -> Result<u64> {
        let mut q = self.query(filter);
        if filter.post_filtered() {
            let rows = self.inner.store.query_memories(&q).await.map_err(self.store_error("find memories"))?;
            q.ids = rows.into_iter().filter(|r| filter.keeps(r)).map(|r| r.id).collect();
            if q.ids.is_empty() {
                return Ok(0);
            }
        }
        self.inner.store.delete_memories(&q).await.map_err(self.store_error("forget memories"))
    }

    /// The embedding models of the memories in `scope` (under the root), most used first.
    pub async fn models(&self, scope: &str) -> Result<Vec<ModelCount>> {
        let q = MemoryQuery { scope_prefix: Some(self.scope_path(Some(scope))), ..MemoryQuery::default() };
        self.inner.store.memory_models(&q).await.map_err(self.store_error("read its models"))
    }

    fn query(&self, f: &MemoryFilter) -> MemoryQuery {
        MemoryQuery {
            scope_prefix: Some(self.scope_path(f.scope.as_deref())),
            source: f.source.clone(),
            model: f.model.clone(),
            ids: f.ids.iter().map(Uuid::to_string).collect(),
            older_than: f.older_than,
            ..MemoryQuery::default()
        }
    }

    /// The standalone facts, decisions and preferences in `content`, one line each, by the
    /// memory's model ([`llm`](Memory::llm)). Stores nothing. Never fails: without a model,
    /// or when the model fails or replies unusably, it returns `[content]` (the whole text as
    /// one memory), as CrewAI does.
    pub async fn extract_memories(&self, content: &str) -> Vec<String> {
        let Some(llm) = &self.inner.llm else { return vec![content.to_string()] };
        let request = ChatRequest::new([
            Message::system(
                "Extract the standalone facts, decisions and preferences worth remembering from the text. \
                 Each memory is one short sentence that makes sense on its own. Prefer facts the user states \
                 about themselves. Reply with JSON: {\"memories\": [\"...\"]}.",
            ),
            Message::user(content),
        ]);
        match llm.generate::<Extracted>(request).await {
            Ok(e) => e.memories.into_iter().map(|m| m.trim().to_string()).filter(|m| !m.is_empty()).collect(),
            Err(_) => vec![content.to_string()],
        }
    }
}

#[derive(Deserialize, schemars::JsonSchema)]
struct Extracted {
    memories: Vec<String>,
}

fn record(row: MemoryRow) -> Result<MemoryRecord> {
    let id = Uuid::parse_str(&row.id).map_err(|e| MemoryError::Corrupt(format!("id `{}`: {e}", row.id)))?;
    let metadata = match row.metadata {
        Value::Object(m) => m,
        Value::Null => Map::new(),
        other => return Err(MemoryError::Corrupt(format!("memory {id}: metadata is not an object: {other}"))),
    };
    Ok(MemoryRecord {
        id,
        content: row.content,
        scope: row.scope,
        categories: row.categories,
        metadata,
        importance: row.importance,
        created_at: row.created_at,
        last_accessed: row.last_accessed,
        source: row.source,
        model: row.model,
    })
}

/// `scope` under `root`, normalised: a leading `/`, no trailing `/`, no empty segments.
fn join(root: &str, scope: Option<&str>) -> String {
    let parts: Vec<&str> =
        root.split('/').chain(scope.unwrap_or("").split('/')).filter(|s| !s.is_empty() && *s != ".").collect();
    format!("/{}", parts.join("/"))
}

/// Deduplicated, trimmed, non-empty lines (for lessons).
pub(crate) fn clean(lines: Vec<String>) -> Vec<String> {
    let mut seen = HashSet::new();
    lines.into_iter().map(|l| l.trim().to_string()).filter(|l| !l.is_empty() && seen.insert(l.to_lowercase())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_join_under_the_root() {
        assert_eq!(join("/", None), "/");
        assert_eq!(join("/flow/invoice", Some("lessons/draft")), "/flow/invoice/lessons/draft");
        assert_eq!(join("/flow/invoice/", Some("/lessons/")), "/flow/invoice/lessons");
        assert_eq!(join("flow//x", Some("")), "/flow/x");
    }

    #[test]
    fn recency_halves_every_half_life() {
        let s = Scoring::default();
        assert!((s.recency(chrono::Duration::zero()) - 1.0).abs() < 1e-6);
        assert!((s.recency(chrono::Duration::days(30)) - 0.5).abs() < 1e-6);
        assert!((s.recency(chrono::Duration::days(60)) - 0.25).abs() < 1e-6);
    }
}
