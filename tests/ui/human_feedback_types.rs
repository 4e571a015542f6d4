use crewflow::prelude::*;

struct Review;

#[flow]
impl Review {
    #[start]
    #[human_feedback(message = "Publish?", emit = ["approved", "rejected"])]
    async fn draft(&self) -> Result<String> {
        Ok("draft".into())
    }

    // Listeners of an outcome receive the FeedbackResult, not a String.
    #[listen("approved")]
    async fn publish(&self, text: String) -> Result<String> {
        Ok(text)
    }

    #[listen("rejected")]
    async fn bin(&self, review: FeedbackResult) -> Result<String> {
        Ok(review.feedback)
    }
}

fn main() {}
