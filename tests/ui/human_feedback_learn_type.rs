use crewflow::prelude::*;

struct Review;

#[flow]
impl Review {
    // A learner must implement FeedbackLearner; a feedback provider does not.
    #[start]
    #[human_feedback(message = "ok?", learn = crewflow::feedback::DeferredFeedback)]
    async fn draft(&self) -> Result<String> {
        Ok("draft".into())
    }
}

fn main() {}
