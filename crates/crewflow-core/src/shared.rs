//! [`IntoShared`]: one setter takes either a value of yours or an `Arc` you already share, so
//! no setter needs an `_arc` twin.

use std::sync::Arc;

use crate::feedback::{FeedbackLearner, FeedbackProvider, OutcomeClassifier};
use crate::input::InputProvider;
use crate::persist::RunStore;

/// A value the flow keeps behind an `Arc<T>`: any implementation of the trait (moved into a
/// new `Arc`), or an `Arc<dyn Trait>` shared with other flows (kept as is, so two flows given
/// the same `Arc` share one store or provider).
///
/// ```
/// use std::sync::Arc;
/// use crewflow_core::{ConsoleInput, FlowBuilder, InputProvider};
///
/// let shared: Arc<dyn InputProvider> = Arc::new(ConsoleInput);
/// let a = FlowBuilder::<()>::new("a").input_provider(shared.clone());
/// let b = FlowBuilder::<()>::new("b").input_provider(ConsoleInput);
/// # let _ = (a, b);
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be given here: it needs to implement the trait of `{T}` (or be an `Arc<{T}>`)"
)]
pub trait IntoShared<T: ?Sized> {
    /// The value behind an `Arc`.
    fn into_shared(self) -> Arc<T>;
}

macro_rules! shared {
    ($($tr:ident),* $(,)?) => {$(
        impl<V: $tr> IntoShared<dyn $tr> for V {
            fn into_shared(self) -> Arc<dyn $tr> {
                Arc::new(self)
            }
        }

        impl IntoShared<dyn $tr> for Arc<dyn $tr> {
            fn into_shared(self) -> Arc<dyn $tr> {
                self
            }
        }
    )*};
}

shared!(RunStore, InputProvider, FeedbackProvider, OutcomeClassifier, FeedbackLearner);
