//! Where memories live (schema migration 3): the rows `crewflow-memory` ranks.
//!
//! The store keeps each memory's text, scope, categories, metadata, importance, times, source,
//! and its embedding (little-endian `f32`s) with the id of the model that made it. Queries
//! filter by scope prefix, source and model in SQL (the scope is indexed); ranking by meaning
//! is done by the caller over the rows returned (brute-force cosine, see `docs/memory.md`).

#![cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))] // helpers of the backends

use chrono::{DateTime, Utc};
use crewflow_core::persist::StoreFuture;
use serde_json::Value;

/// One stored memory.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryRow {
    /// Its id (a UUID v7, as text).
    pub id: String,
    /// The remembered text.
    pub content: String,
    /// Its scope, a path such as `/flow/invoice/lessons`.
    pub scope: String,
    /// Its categories.
    pub categories: Vec<String>,
    /// Free metadata (a JSON object).
    pub metadata: Value,
    /// How much it matters, 0 to 1.
    pub importance: f32,
    /// When it was remembered.
    pub created_at: DateTime<Utc>,
    /// When it was last recalled.
    pub last_accessed: DateTime<Utc>,
    /// Where it came from (e.g. `hitl` for lessons from human review).
    pub source: Option<String>,
    /// The embedding model's id (vectors of different models are never compared).
    pub model: String,
    /// The embedding (empty when the query asked for none).
    pub embedding: Vec<f32>,
}

/// Which memories a query reads (or a delete removes). Every condition set must hold.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MemoryQuery {
    /// The scope and everything under it (`/a` matches `/a` and `/a/b`, not `/ab`); `None` or
    /// `/`: every scope.
    pub scope_prefix: Option<String>,
    /// Only memories of this source.
    pub source: Option<String>,
    /// Only memories embedded by this model.
    pub model: Option<String>,
    /// Only these ids (when not empty).
    pub ids: Vec<String>,
    /// Only memories created before this time.
    pub older_than: Option<DateTime<Utc>>,
    /// At most this many rows, newest first (`None`: all).
    pub limit: Option<u64>,
    /// Skip this many rows first.
    pub offset: u64,
    /// Whether to read the embeddings (left empty otherwise).
    pub with_embeddings: bool,
    /// Rows in any order, not newest first: no sort of the rows (and their embeddings), for
    /// callers that rank them anyway.
    pub unordered: bool,
}

/// Which embedding models a scope's memories use, and how many of each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelCount {
    /// The model's id.
    pub model: String,
    /// The vectors' length.
    pub dimensions: usize,
    /// How many memories.
    pub count: u64,
}

/// A store that keeps memories: [`SqliteStore`](crate::SqliteStore) and
/// `PostgresStore`. Used through `crewflow::memory::Memory`.
pub trait MemoryStore: Send + Sync + 'static {
    /// Names the store in messages.
    fn describe(&self) -> String;

    /// Adds memories, all or none (one transaction).
    fn insert_memories<'a>(&'a self, rows: &'a [MemoryRow]) -> StoreFuture<'a, ()>;

    /// The memories matching `query`, newest first (unless [`MemoryQuery::unordered`]).
    fn query_memories<'a>(&'a self, query: &'a MemoryQuery) -> StoreFuture<'a, Vec<MemoryRow>>;

    /// The models of the memories matching `query` (its limit and offset are ignored).
    fn memory_models<'a>(&'a self, query: &'a MemoryQuery) -> StoreFuture<'a, Vec<ModelCount>>;

    /// Deletes the memories matching `query` (its limit and offset are ignored); returns how
    /// many.
    fn delete_memories<'a>(&'a self, query: &'a MemoryQuery) -> StoreFuture<'a, u64>;

    /// Sets the last access time of these memories.
    fn touch_memories<'a>(&'a self, ids: &'a [String], at: DateTime<Utc>) -> StoreFuture<'a, ()>;
}

/// An embedding as stored: little-endian `f32`s.
pub(crate) fn vector_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// An embedding from its stored bytes.
pub(crate) fn vector_from(bytes: &[u8]) -> Result<Vec<f32>, crate::StoreError> {
    if !bytes.len().is_multiple_of(4) {
        return Err(crate::StoreError::Corrupt(format!(
            "a memory's embedding has {} bytes, not a whole number of f32s",
            bytes.len()
        )));
    }
    Ok(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

/// The bounds of a scope prefix for an index range: the scope itself, or a scope in
/// `[prefix/, prefix0)` (`0` is the character after `/`). `None`: every scope.
pub(crate) fn scope_bounds(prefix: Option<&str>) -> Option<(String, String, String)> {
    let p = prefix?.trim_end_matches('/');
    if p.is_empty() {
        return None;
    }
    Some((p.to_string(), format!("{p}/"), format!("{p}0")))
}

pub(crate) fn categories_json(c: &[String]) -> String {
    serde_json::to_string(c).unwrap_or_else(|_| "[]".into())
}

pub(crate) fn parse_categories(text: &str) -> Result<Vec<String>, crate::StoreError> {
    serde_json::from_str(text).map_err(|e| crate::StoreError::Corrupt(format!("a memory's categories: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_round_trip_and_scope_bounds_exclude_siblings() {
        let v = vec![1.5f32, -0.25, 0.0];
        assert_eq!(vector_from(&vector_bytes(&v)).unwrap(), v);
        assert!(vector_from(&[0, 1, 2]).is_err());
        let (exact, lo, hi) = scope_bounds(Some("/a/")).unwrap();
        assert_eq!((exact.as_str(), lo.as_str(), hi.as_str()), ("/a", "/a/", "/a0"));
        assert!("/a/b".as_bytes() >= lo.as_bytes() && "/a/b".as_bytes() < hi.as_bytes());
        assert!("/ab".as_bytes() >= hi.as_bytes());
        assert_eq!(scope_bounds(Some("/")), None);
    }
}
