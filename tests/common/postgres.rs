//! PostgreSQL for the tests: the server's URL (`CREWFLOW_TEST_POSTGRES`) and a fresh schema
//! per test, so tests sharing a database never see each other's rows.

pub fn base_url() -> String {
    std::env::var("CREWFLOW_TEST_POSTGRES").expect("CREWFLOW_TEST_POSTGRES")
}

/// A fresh schema for one test, and the URL that works in it. Schemas of earlier test runs
/// older than an hour are dropped on the way (their names carry their creation time).
pub async fn fresh_schema() -> String {
    let now = chrono::Utc::now().timestamp();
    let schema = format!("crewflow_t_{now}_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let (client, conn) = tokio_postgres::connect(&base_url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let old =
        client.query("SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'crewflow_t_%'", &[]).await.unwrap();
    for row in old {
        let name: String = row.get(0);
        let created = name.split('_').nth(2).and_then(|t| t.parse::<i64>().ok()).unwrap_or(0);
        if now - created > 3600 {
            let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE")).await;
        }
    }
    client.batch_execute(&format!("CREATE SCHEMA {schema}")).await.unwrap();
    with_search_path(&base_url(), &schema)
}

/// `url` with its search path set to `schema`.
pub fn with_search_path(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-csearch_path%3D{schema}")
}
