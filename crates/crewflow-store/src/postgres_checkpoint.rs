//! The statement that writes a checkpoint to PostgreSQL, in the shape the checkpoint needs.
//!
//! A checkpoint is one statement (one round trip, committed alone): the `run` CTE updates the
//! run's row when the fencing token matches, the `steps` CTE adds the completed executions,
//! and the chain CTEs (`postgres_chain.rs`) write a chained state. Most checkpoints hold one
//! step and no chain write, so the statement comes in four shapes — one step bound as plain
//! parameters or several through `jsonb_to_recordset`, with or without the chain CTEs — each
//! prepared once per connection. What PostgreSQL spends per checkpoint above a bare one-row
//! commit is what `persist_chain20_pg` measures (`commit_floor_us`): unpacking a JSON array and
//! running CTEs that write nothing cost it 30–60 µs a step (measured with pgbench, docs/store.md).

use crewflow_core::persist::{Checkpoint, StepRow};
use tokio_postgres::types::ToSql;

use crate::postgres_chain::{ChainWrite, chain_ctes};

/// The completed executions of a checkpoint, as one JSON array, for `jsonb_to_recordset`.
pub(crate) fn steps_json(steps: &[StepRow]) -> String {
    let mut out = String::from("[");
    for (i, s) in steps.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let step = serde_json::to_string(&*s.step).unwrap_or_else(|_| "\"?\"".into());
        out.push_str(&format!(
            r#"{{"activation":{},"step":{},"output":{},"finished_at":"{}"}}"#,
            s.activation,
            step,
            s.output,
            s.finished_at.to_rfc3339()
        ));
    }
    out.push(']');
    out
}

/// Inserts the steps of `$STEPS` (a JSON array) for the row the `run` CTE returned.
pub(crate) const INSERT_STEPS: &str = "INSERT INTO crewflow_steps (run_id, activation, step, output, finished_at)
    SELECT run.id, s.activation, s.step, coalesce(s.output, 'null'::jsonb), s.finished_at
    FROM run, jsonb_to_recordset($STEPS::text::jsonb) AS s(activation bigint, step text, output jsonb, finished_at timestamptz)
    ON CONFLICT (run_id, activation) DO UPDATE SET step = excluded.step, output = excluded.output,
        finished_at = excluded.finished_at
    RETURNING 1";

/// Inserts one step, its columns bound as parameters from `$N` on.
fn insert_one_step(n: usize) -> String {
    format!(
        "INSERT INTO crewflow_steps (run_id, activation, step, output, finished_at)
         SELECT run.id, ${n}::bigint, ${}::text, ${}::text::jsonb, ${}::timestamptz FROM run
         ON CONFLICT (run_id, activation) DO UPDATE SET step = excluded.step, output = excluded.output,
             finished_at = excluded.finished_at
         RETURNING 1",
        n + 1,
        n + 2,
        n + 3
    )
}

/// A checkpoint's statement and the values it binds.
pub(crate) struct CheckpointWrite<'a> {
    pub sql: String,
    run_id: String,
    seq: i64,
    fencing: i64,
    state_version: i64,
    chain: ChainWrite<'a>,
    cp: &'a Checkpoint,
    /// The one step's activation and name, when the checkpoint holds one step.
    one: Option<(i64, &'a str, &'a StepRow)>,
    steps: Option<String>,
}

impl<'a> CheckpointWrite<'a> {
    /// The statement writing `cp`, in the shape it needs; it returns the number of run rows it
    /// updated (0: the fencing token did not match, and nothing was written).
    pub(crate) fn of(cp: &'a Checkpoint) -> Self {
        let chain = ChainWrite::of(cp);
        let chained = chain.drop || chain.body.is_some();
        let one = match cp.steps.as_slice() {
            [only] => Some((only.activation as i64, &*only.step, only)),
            _ => None,
        };
        let steps_cte = if one.is_some() { insert_one_step(8) } else { INSERT_STEPS.replace("$STEPS", "$8") };
        let next = if one.is_some() { 12 } else { 9 };
        let chain_part =
            if chained { format!(",\n{}", chain_ctes(next, next + 1, next + 2, 4)) } else { String::new() };
        let sql = format!(
            "WITH run AS (
                 UPDATE crewflow_runs SET state = coalesce($2::text::jsonb, state), frontier = $3::text::jsonb,
                     seq = $4, updated_at = now(), pending = coalesce($6::text::jsonb, pending),
                     state_version = $7
                 WHERE id = $1 AND fencing = $5 RETURNING id),
             steps AS ({steps_cte}){chain_part}
             SELECT count(*) FROM run"
        );
        CheckpointWrite {
            sql,
            run_id: cp.run_id.to_string(),
            seq: cp.seq as i64,
            fencing: cp.fencing as i64,
            state_version: i64::from(cp.state_version),
            chain,
            cp,
            steps: one.is_none().then(|| steps_json(&cp.steps)),
            one,
        }
    }

    /// The values, in the statement's order.
    pub(crate) fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        let mut out: Vec<&(dyn ToSql + Sync)> = vec![
            &self.run_id,
            &self.chain.row_state,
            &self.cp.frontier,
            &self.seq,
            &self.fencing,
            &self.cp.feedback,
            &self.state_version,
        ];
        match (&self.one, &self.steps) {
            (Some((activation, step, row)), _) => {
                out.extend([activation as &(dyn ToSql + Sync), step, &row.output, &row.finished_at])
            }
            (None, Some(steps)) => out.push(steps),
            (None, None) => {}
        }
        if self.chain.drop || self.chain.body.is_some() {
            out.extend([
                &self.chain.drop as &(dyn ToSql + Sync),
                &self.chain.kind as &(dyn ToSql + Sync),
                &self.chain.body as &(dyn ToSql + Sync),
            ]);
        }
        out
    }
}
