//! A task's `output_file`: its output written to a file, once per run.

use std::path::PathBuf;

use crate::crew::TaskOutput;
use crate::error::AgentError;
use crate::journal;
use crate::template::Inputs;

/// The file's path: `path` with its placeholders filled from `inputs`.
pub(crate) fn path(task: &str, path: &str, inputs: &Inputs) -> Result<String, AgentError> {
    let path = inputs.interpolate(path, &format!("output_file of task \"{task}\""))?;
    if path.trim().is_empty() {
        return Err(AgentError::Config(format!(
            "task \"{task}\": its output_file is empty; name a file or leave output_file out"
        )));
    }
    Ok(path)
}

/// Writes `output` to `path` (interpolated; missing directories created): the JSON, pretty,
/// for a typed output, else the raw answer.
///
/// Inside a step the write goes through the run's journal under `<task path>/output_file`, so a
/// step that runs again and replays the task from the journal does not write the file again
/// (a person or a later step may have moved or changed it since).
pub(crate) async fn write(task: &str, path: &str, output: &TaskOutput) -> Result<(), AgentError> {
    let path = path.to_string();
    let content = match &output.json {
        Some(json) => serde_json::to_string_pretty(json).unwrap_or_else(|_| output.raw.clone()),
        None => output.raw.clone(),
    };
    let failed = |source: std::io::Error, path: &str| AgentError::OutputFile {
        task: task.to_string(),
        path: path.to_string(),
        source,
    };
    let Some(scope) = crewflow_core::scope::current() else {
        return write_file(path.clone(), content).await.map_err(|e| failed(e, &path));
    };
    let name = journal::join(&journal::current_path(), "output_file");
    let target = path.clone();
    let written = scope.once(&name, |_| async move { write_file(target, content).await.map(|()| true) }).await;
    match written {
        Ok(_) => Ok(()),
        Err(crewflow_core::journal::OnceError::Failed { source, .. }) => match source.downcast::<std::io::Error>() {
            Ok(e) => Err(failed(*e, &path)),
            Err(other) => Err(AgentError::Config(format!("task \"{task}\": writing {path} failed: {other}"))),
        },
        Err(other) => Err(AgentError::Config(format!(
            "task \"{task}\": the write of {path} could not be recorded in the run's journal: {other}"
        ))),
    }
}

/// Creates the parent directories and writes the file (off the async threads).
async fn write_file(path: String, content: String) -> std::io::Result<()> {
    tokio::task::spawn_blocking(move || {
        let path = PathBuf::from(path);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, content)
    })
    .await
    .map_err(std::io::Error::other)?
}
