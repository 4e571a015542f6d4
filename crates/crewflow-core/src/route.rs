//! Routes: the values routers return.
//!
//! A typed route is an enum with `#[derive(Route)]`: its labels are known at compile time, so a
//! listener on a label no router returns, and a label no step handles, are both errors before
//! anything runs. A `String` is also a route (for flows assembled at run time); a string router
//! must declare the labels it can return.

use std::borrow::Cow;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A value a router returns: it names the label that is dispatched to listeners.
///
/// Derive it on an enum of unit variants with `#[derive(Route)]` (from the `crewflow`
/// crate), e.g. `enum Lane { Security, Priority, #[route(terminal)] Ignore }`. The derive also
/// implements `Serialize` and `Deserialize` (as the label string); `#[route(rename = "..")]`
/// changes a variant's label.
pub trait Route: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The type's name, for error messages.
    const TYPE_NAME: &'static str;
    /// Every label this type can produce, when known in advance (`None` for `String`).
    const LABELS: Option<&'static [&'static str]>;
    /// Labels that may go unhandled: returning one ends that branch of the run.
    const TERMINAL: &'static [&'static str] = &[];
    /// One message per label, used by the `#[flow]` macro's compile-time check.
    #[doc(hidden)]
    const UNHANDLED_MESSAGES: &'static [&'static str] = &[];

    /// The label of this value.
    fn label(&self) -> Cow<'_, str>;
}

impl Route for String {
    const TYPE_NAME: &'static str = "String";
    const LABELS: Option<&'static [&'static str]> = None;

    fn label(&self) -> Cow<'_, str> {
        Cow::Borrowed(self)
    }
}
