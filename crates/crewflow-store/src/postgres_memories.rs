//! Memories in PostgreSQL (schema migration 3).

use chrono::{DateTime, Utc};
use crewflow_core::persist::StoreFuture;
use tokio_postgres::types::ToSql;

use crate::StoreError;
use crate::memory::{
    MemoryQuery, MemoryRow, MemoryStore, ModelCount, categories_json, parse_categories, scope_bounds, vector_bytes,
    vector_from,
};
use crate::postgres::{PostgresStore, boxed};

/// Migration 3: memories (embeddings as little-endian `f32` bytes), indexed by scope. The
/// scope compares bytewise (`COLLATE "C"`), so a prefix is an index range.
pub(crate) const MIGRATION: &str = r#"
CREATE TABLE crewflow_memories (
    id            TEXT PRIMARY KEY,
    scope         TEXT COLLATE "C" NOT NULL,
    content       TEXT NOT NULL,
    categories    JSONB NOT NULL,
    metadata      JSONB NOT NULL,
    importance    REAL NOT NULL,
    source        TEXT,
    model         TEXT NOT NULL,
    embedding     BYTEA NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    last_accessed TIMESTAMPTZ NOT NULL
);
CREATE INDEX crewflow_memories_by_scope ON crewflow_memories (scope, created_at);
"#;

type Arg = Box<dyn ToSql + Sync + Send>;

fn conditions(q: &MemoryQuery) -> (String, Vec<Arg>) {
    let mut sql = vec!["TRUE".to_string()];
    let mut args: Vec<Arg> = Vec::new();
    fn arg(v: Arg, args: &mut Vec<Arg>) -> String {
        args.push(v);
        format!("${}", args.len())
    }
    if let Some((exact, lo, hi)) = scope_bounds(q.scope_prefix.as_deref()) {
        let (a, b, c) = (arg(Box::new(exact), &mut args), arg(Box::new(lo), &mut args), arg(Box::new(hi), &mut args));
        sql.push(format!("(scope = {a} OR (scope >= {b} AND scope < {c}))"));
    }
    if let Some(source) = &q.source {
        let a = arg(Box::new(source.clone()), &mut args);
        sql.push(format!("source = {a}"));
    }
    if let Some(model) = &q.model {
        let a = arg(Box::new(model.clone()), &mut args);
        sql.push(format!("model = {a}"));
    }
    if !q.ids.is_empty() {
        let a = arg(Box::new(q.ids.clone()), &mut args);
        sql.push(format!("id = ANY({a})"));
    }
    if let Some(t) = q.older_than {
        let a = arg(Box::new(t), &mut args);
        sql.push(format!("created_at < {a}"));
    }
    (sql.join(" AND "), args)
}

fn refs(args: &[Arg]) -> Vec<&(dyn ToSql + Sync)> {
    args.iter().map(|a| &**a as &(dyn ToSql + Sync)).collect()
}

const COLUMNS: &str =
    "id, scope, content, categories::text, metadata::text, importance, source, model, created_at, last_accessed";

fn read_row(r: &tokio_postgres::Row, with_embedding: bool) -> Result<MemoryRow, StoreError> {
    let categories: String = r.try_get(3)?;
    let metadata: String = r.try_get(4)?;
    let embedding = if with_embedding { vector_from(&r.try_get::<_, Vec<u8>>(10)?)? } else { Vec::new() };
    Ok(MemoryRow {
        id: r.try_get(0)?,
        scope: r.try_get(1)?,
        content: r.try_get(2)?,
        categories: parse_categories(&categories)?,
        metadata: serde_json::from_str(&metadata)
            .map_err(|e| StoreError::Corrupt(format!("a memory's metadata: {e}")))?,
        importance: r.try_get(5)?,
        source: r.try_get(6)?,
        model: r.try_get(7)?,
        created_at: r.try_get(8)?,
        last_accessed: r.try_get(9)?,
        embedding,
    })
}

impl MemoryStore for PostgresStore {
    fn describe(&self) -> String {
        crewflow_core::persist::RunStore::describe(self)
    }

    fn insert_memories<'a>(&'a self, rows: &'a [MemoryRow]) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            boxed(
                async {
                    for m in rows {
                        crate::util::refuse_nul_text("a memory's content", &m.content)?;
                        crate::util::refuse_nul_text("a memory's scope", &m.scope)?;
                        for category in &m.categories {
                            crate::util::refuse_nul_text("a memory's category", category)?;
                        }
                        crate::util::refuse_nul_json("a memory's metadata", &m.metadata.to_string())?;
                    }
                    let mut client = self.client().await?;
                    let tx = client.transaction().await?;
                    let stmt = tx
                        .prepare_cached(
                            "INSERT INTO crewflow_memories (id, scope, content, categories, metadata, importance,
                                 source, model, embedding, created_at, last_accessed)
                             VALUES ($1, $2, $3, $4::text::jsonb, $5::text::jsonb, $6, $7, $8, $9, $10, $11)",
                        )
                        .await?;
                    for m in rows {
                        tx.execute(
                            &stmt,
                            &[
                                &m.id,
                                &m.scope,
                                &m.content,
                                &categories_json(&m.categories),
                                &m.metadata.to_string(),
                                &m.importance,
                                &m.source,
                                &m.model,
                                &vector_bytes(&m.embedding),
                                &m.created_at,
                                &m.last_accessed,
                            ],
                        )
                        .await?;
                    }
                    tx.commit().await?;
                    Ok(())
                }
                .await,
            )
        })
    }

    fn query_memories<'a>(&'a self, query: &'a MemoryQuery) -> StoreFuture<'a, Vec<MemoryRow>> {
        Box::pin(async move {
            boxed(
                async {
                    let client = self.client().await?;
                    let (cond, mut args) = conditions(query);
                    let embedding = if query.with_embeddings { ", embedding" } else { "" };
                    let limit = query.limit.map(|l| i64::try_from(l).unwrap_or(i64::MAX));
                    args.push(Box::new(limit));
                    args.push(Box::new(i64::try_from(query.offset).unwrap_or(i64::MAX)));
                    let n = args.len();
                    let order = if query.unordered { "" } else { "ORDER BY created_at DESC, id DESC" };
                    let sql = format!(
                        "SELECT {COLUMNS}{embedding} FROM crewflow_memories WHERE {cond} {order} LIMIT ${} OFFSET ${n}",
                        n - 1
                    );
                    let rows = client.query(&sql, &refs(&args)).await?;
                    rows.iter().map(|r| read_row(r, query.with_embeddings)).collect()
                }
                .await,
            )
        })
    }

    fn memory_models<'a>(&'a self, query: &'a MemoryQuery) -> StoreFuture<'a, Vec<ModelCount>> {
        Box::pin(async move {
            boxed(
                async {
                    let client = self.client().await?;
                    let (cond, args) = conditions(query);
                    let sql = format!(
                        "SELECT model, (length(embedding) / 4)::bigint, count(*)::bigint FROM crewflow_memories
                         WHERE {cond} GROUP BY model, length(embedding) ORDER BY count(*) DESC"
                    );
                    let rows = client.query(&sql, &refs(&args)).await?;
                    rows.iter()
                        .map(|r| {
                            Ok(ModelCount {
                                model: r.try_get(0)?,
                                dimensions: r.try_get::<_, i64>(1)? as usize,
                                count: r.try_get::<_, i64>(2)? as u64,
                            })
                        })
                        .collect()
                }
                .await,
            )
        })
    }

    fn delete_memories<'a>(&'a self, query: &'a MemoryQuery) -> StoreFuture<'a, u64> {
        Box::pin(async move {
            boxed(
                async {
                    let client = self.client().await?;
                    let (cond, args) = conditions(query);
                    Ok(client.execute(&format!("DELETE FROM crewflow_memories WHERE {cond}"), &refs(&args)).await?)
                }
                .await,
            )
        })
    }

    fn touch_memories<'a>(&'a self, ids: &'a [String], at: DateTime<Utc>) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            boxed(
                async {
                    let client = self.client().await?;
                    client
                        .execute("UPDATE crewflow_memories SET last_accessed = $1 WHERE id = ANY($2)", &[&at, &ids])
                        .await?;
                    Ok(())
                }
                .await,
            )
        })
    }
}
