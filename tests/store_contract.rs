//! The store contract (`tests/common/store_contract.rs`) on every backend: a SQLite file, and
//! PostgreSQL when `CREWFLOW_TEST_POSTGRES` is set (otherwise those tests report themselves
//! ignored, saying why). Tests are named `<backend>::<clause>`: `cargo test --test
//! store_contract sqlite::` runs one backend, `-- a_stale_fencing_token` one clause on each.
//!
//! A new backend is one more module here: an `async fn` giving a fresh, empty database, and
//! `store_contract_clauses!` over it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;
#[macro_use]
#[path = "common/store_contract.rs"]
mod contract;

use std::sync::Arc;

use contract::{Database, Handle};
use crewflow::store::{PostgresStore, SqliteStore};

/// A fresh SQLite file in a temporary directory; each handle is a store (a connection) of its own.
async fn sqlite_database() -> Database {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("contract.db");
    Database::new(
        move || {
            let store = SqliteStore::open(&path);
            Handle { runs: Arc::new(store.clone()), memories: Arc::new(store.clone()), sessions: Arc::new(store) }
        },
        dir,
    )
}

/// A fresh schema on the PostgreSQL server; each handle is a store (its own connection pools).
async fn postgres_database() -> Database {
    let url = common::postgres::fresh_schema().await;
    Database::new(
        move || {
            let store = PostgresStore::connect_lazy(&url).unwrap();
            Handle { runs: Arc::new(store.clone()), memories: Arc::new(store.clone()), sessions: Arc::new(store) }
        },
        (),
    )
}

mod sqlite {
    store_contract_clauses!(super::sqlite_database);
}

mod postgres {
    store_contract_clauses!(
        super::postgres_database,
        #[cfg_attr(not(crewflow_postgres_tests), ignore = "set CREWFLOW_TEST_POSTGRES=postgres://... to run PostgreSQL tests")]
    );
}
