//! `crewflow compact`: the store's retention policy, from the command line.

use serde_json::json;

use crate::commands::{Ctx, store_failed};
use crate::{CliError, Exit};

/// `crewflow compact`: one `RunStore::compact` with the policy from the flags.
pub(crate) async fn compact(ctx: &Ctx, args: crate::CompactArgs) -> Result<Exit, CliError> {
    let nothing = args.older_than.is_none()
        && args.flow_ttl.is_empty()
        && args.journal_older_than.is_none()
        && args.traces_older_than.is_none()
        && !args.vacuum;
    if nothing {
        return Err(CliError::new(
            Exit::Usage,
            "nothing to compact: give --older-than AGE, --flow-ttl FLOW=AGE, --journal-older-than AGE, \
             --traces-older-than AGE or --vacuum",
        ));
    }
    let mut policy = crewflow_core::persist::Retention::new().vacuum(args.vacuum);
    policy.delete_ended_after = args.older_than;
    policy.drop_journal_after = args.journal_older_than;
    policy.drop_traces_after = args.traces_older_than;
    for (flow, age) in args.flow_ttl {
        policy = policy.flow_ttl(flow, age);
    }
    let url = ctx.store_url();
    let store = ctx.runs()?;
    let report = store.compact(&policy).await.map_err(|e| store_failed(&url, "compact", e))?;
    if ctx.json {
        let removed =
            json!({"runs": report.runs, "steps": report.steps, "journal": report.journal, "traces": report.traces});
        outln!("{removed}");
    } else {
        outln!(
            "compacted {url}: {} runs, {} step outputs, {} journal entries and {} traces removed",
            report.runs,
            report.steps,
            report.journal,
            report.traces
        );
    }
    Ok(Exit::Ok)
}
