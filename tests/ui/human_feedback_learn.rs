use crewflow::prelude::*;

struct Review;

#[flow]
impl Review {
    #[start]
    #[human_feedback(message = "ok?", learn_strict = true)]
    async fn strict_without_learn(&self) -> Result<String> {
        Ok("draft".into())
    }

    #[start]
    #[human_feedback(message = "ok?", learn_source = "qa")]
    async fn source_without_learn(&self) -> Result<String> {
        Ok("draft".into())
    }

    #[start]
    #[human_feedback(message = "ok?", learn = crewflow::feedback::DeferredFeedback, learn_strict = "yes")]
    async fn strict_not_a_bool(&self) -> Result<String> {
        Ok("draft".into())
    }
}

fn main() {}
