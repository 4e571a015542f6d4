//! Memories in SQLite (schema migration 3).

use chrono::{DateTime, Utc};
use crewflow_core::persist::StoreFuture;
use rusqlite::types::Value as Sql;
use rusqlite::{TransactionBehavior, params, params_from_iter};

use crate::StoreError;
use crate::memory::{
    MemoryQuery, MemoryRow, MemoryStore, ModelCount, categories_json, parse_categories, scope_bounds, vector_bytes,
    vector_from,
};
use crate::sqlite::{SqliteStore, boxed, from_ms, ms};

/// Migration 3: memories (embeddings as little-endian `f32` blobs), indexed by scope.
pub(crate) const MIGRATION: &str = r#"
CREATE TABLE crewflow_memories (
    id            TEXT PRIMARY KEY,
    scope         TEXT NOT NULL,
    content       TEXT NOT NULL,
    categories    TEXT NOT NULL,
    metadata      TEXT NOT NULL,
    importance    REAL NOT NULL,
    source        TEXT,
    model         TEXT NOT NULL,
    embedding     BLOB NOT NULL,
    created_at    INTEGER NOT NULL,
    last_accessed INTEGER NOT NULL
);
CREATE INDEX crewflow_memories_by_scope ON crewflow_memories (scope, created_at);
"#;

/// The `WHERE` clause of a query and its parameters.
fn conditions(q: &MemoryQuery) -> (String, Vec<Sql>) {
    let mut sql = vec!["1 = 1".to_string()];
    let mut args: Vec<Sql> = Vec::new();
    let arg = |v: Sql, args: &mut Vec<Sql>| {
        args.push(v);
        format!("?{}", args.len())
    };
    if let Some((exact, lo, hi)) = scope_bounds(q.scope_prefix.as_deref()) {
        let (a, b, c) =
            (arg(Sql::Text(exact), &mut args), arg(Sql::Text(lo), &mut args), arg(Sql::Text(hi), &mut args));
        sql.push(format!("(scope = {a} OR (scope >= {b} AND scope < {c}))"));
    }
    if let Some(source) = &q.source {
        let a = arg(Sql::Text(source.clone()), &mut args);
        sql.push(format!("source = {a}"));
    }
    if let Some(model) = &q.model {
        let a = arg(Sql::Text(model.clone()), &mut args);
        sql.push(format!("model = {a}"));
    }
    if !q.ids.is_empty() {
        let list: Vec<String> = q.ids.iter().map(|id| arg(Sql::Text(id.clone()), &mut args)).collect();
        sql.push(format!("id IN ({})", list.join(", ")));
    }
    if let Some(t) = q.older_than {
        let a = arg(Sql::Integer(ms(t)), &mut args);
        sql.push(format!("created_at < {a}"));
    }
    (sql.join(" AND "), args)
}

fn read_row(r: &rusqlite::Row<'_>, with_embedding: bool) -> Result<MemoryRow, StoreError> {
    let categories: String = r.get("categories")?;
    let metadata: String = r.get("metadata")?;
    let embedding = if with_embedding {
        // Borrowed, not copied: recall reads every row's vector.
        let bytes =
            r.get_ref("embedding")?.as_blob().map_err(|e| StoreError::Corrupt(format!("a memory's embedding: {e}")))?;
        vector_from(bytes)?
    } else {
        Vec::new()
    };
    Ok(MemoryRow {
        id: r.get("id")?,
        content: r.get("content")?,
        scope: r.get("scope")?,
        categories: parse_categories(&categories)?,
        metadata: serde_json::from_str(&metadata)
            .map_err(|e| StoreError::Corrupt(format!("a memory's metadata: {e}")))?,
        importance: r.get::<_, f64>("importance")? as f32,
        created_at: from_ms(r.get("created_at")?),
        last_accessed: from_ms(r.get("last_accessed")?),
        source: r.get("source")?,
        model: r.get("model")?,
        embedding,
    })
}

impl MemoryStore for SqliteStore {
    fn describe(&self) -> String {
        crewflow_core::persist::RunStore::describe(self)
    }

    fn insert_memories<'a>(&'a self, rows: &'a [MemoryRow]) -> StoreFuture<'a, ()> {
        let rows = rows.to_vec();
        Box::pin(async move {
            boxed(
                self.call(move |c| {
                    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                    {
                        let mut stmt = tx.prepare_cached(
                            "INSERT INTO crewflow_memories (id, scope, content, categories, metadata, importance,
                                 source, model, embedding, created_at, last_accessed)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                        )?;
                        for m in &rows {
                            stmt.execute(params![
                                m.id,
                                m.scope,
                                m.content,
                                categories_json(&m.categories),
                                m.metadata.to_string(),
                                f64::from(m.importance),
                                m.source,
                                m.model,
                                vector_bytes(&m.embedding),
                                ms(m.created_at),
                                ms(m.last_accessed),
                            ])?;
                        }
                    }
                    tx.commit()?;
                    Ok(())
                })
                .await,
            )
        })
    }

    fn query_memories<'a>(&'a self, query: &'a MemoryQuery) -> StoreFuture<'a, Vec<MemoryRow>> {
        let q = query.clone();
        Box::pin(async move {
            boxed(
                self.call(move |c| {
                    let (cond, mut args) = conditions(&q);
                    let columns = if q.with_embeddings {
                        "*"
                    } else {
                        "id, scope, content, categories, metadata, importance, source, model, created_at, last_accessed"
                    };
                    args.push(Sql::Integer(q.limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX))));
                    args.push(Sql::Integer(i64::try_from(q.offset).unwrap_or(i64::MAX)));
                    let n = args.len();
                    let order = if q.unordered { "" } else { "ORDER BY created_at DESC, id DESC" };
                    let sql = format!(
                        "SELECT {columns} FROM crewflow_memories WHERE {cond} {order} LIMIT ?{} OFFSET ?{n}",
                        n - 1
                    );
                    let mut stmt = c.prepare_cached(&sql)?;
                    let mut rows = stmt.query(params_from_iter(args))?;
                    let mut out = Vec::new();
                    while let Some(r) = rows.next()? {
                        out.push(read_row(r, q.with_embeddings)?);
                    }
                    Ok(out)
                })
                .await,
            )
        })
    }

    fn memory_models<'a>(&'a self, query: &'a MemoryQuery) -> StoreFuture<'a, Vec<ModelCount>> {
        let q = query.clone();
        Box::pin(async move {
            boxed(
                self.call(move |c| {
                    let (cond, args) = conditions(&q);
                    let sql = format!(
                        "SELECT model, length(embedding) / 4, count(*) FROM crewflow_memories WHERE {cond}
                         GROUP BY model, length(embedding) ORDER BY count(*) DESC"
                    );
                    let mut stmt = c.prepare_cached(&sql)?;
                    let rows = stmt.query_map(params_from_iter(args), |r| {
                        Ok(ModelCount {
                            model: r.get(0)?,
                            dimensions: r.get::<_, i64>(1)? as usize,
                            count: r.get::<_, i64>(2)? as u64,
                        })
                    })?;
                    Ok(rows.collect::<Result<Vec<_>, _>>()?)
                })
                .await,
            )
        })
    }

    fn delete_memories<'a>(&'a self, query: &'a MemoryQuery) -> StoreFuture<'a, u64> {
        let q = query.clone();
        Box::pin(async move {
            boxed(
                self.call(move |c| {
                    let (cond, args) = conditions(&q);
                    let n =
                        c.execute(&format!("DELETE FROM crewflow_memories WHERE {cond}"), params_from_iter(args))?;
                    Ok(n as u64)
                })
                .await,
            )
        })
    }

    fn touch_memories<'a>(&'a self, ids: &'a [String], at: DateTime<Utc>) -> StoreFuture<'a, ()> {
        let ids = ids.to_vec();
        Box::pin(async move {
            boxed(
                self.call(move |c| {
                    let tx = c.transaction()?;
                    {
                        let mut stmt =
                            tx.prepare_cached("UPDATE crewflow_memories SET last_accessed = ?1 WHERE id = ?2")?;
                        for id in &ids {
                            stmt.execute(params![ms(at), id])?;
                        }
                    }
                    tx.commit()?;
                    Ok(())
                })
                .await,
            )
        })
    }
}
