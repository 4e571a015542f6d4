//! The errors of reading, building and starting a declarative flow.

/// What went wrong with a definition, named precisely enough to fix it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeclarativeError {
    /// The file could not be read.
    #[error("cannot read the flow definition {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The text is not valid YAML / JSON, or does not have the shape of a definition (an
    /// unknown or missing key, a wrong type); the message says where.
    #[error("{origin} is not a valid flow definition: {message}")]
    Syntax {
        /// The file, or "the definition" for text.
        origin: String,
        /// What is wrong, and where.
        message: String,
    },
    /// A flow-wide problem (schema version, config, persist, state schema).
    #[error("flow `{flow}`: {message}")]
    Invalid {
        /// The flow's name.
        flow: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A problem with one method (its condition, action, feedback or labels).
    #[error("flow `{flow}`, method `{method}`: {message}")]
    Method {
        /// The flow's name.
        flow: String,
        /// The method.
        method: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The kickoff inputs do not fit the definition's state.
    #[error("flow `{flow}`: the inputs do not fit the state: {message}")]
    Input {
        /// The flow's name.
        flow: String,
        /// Which values are wrong.
        message: String,
    },
    /// The engine refused the flow or a run of it.
    #[error("flow `{flow}`: {source}")]
    Flow {
        /// The flow's name.
        flow: String,
        /// The engine's error.
        #[source]
        source: Box<crewflow_core::Error>,
    },
}
