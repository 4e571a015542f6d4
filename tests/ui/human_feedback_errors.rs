use crewflow::prelude::*;

struct Review;

#[flow]
impl Review {
    #[start]
    #[human_feedback(emit = ["approved"])]
    async fn missing_message(&self) -> Result<String> {
        Ok("draft".into())
    }

    #[start]
    #[human_feedback(message = "ok?", default_outcome = "maybe")]
    async fn default_without_emit(&self) -> Result<String> {
        Ok("draft".into())
    }

    #[start]
    #[human_feedback(message = "ok?", emit = ["approved", "rejected"], default_outcome = "maybe")]
    async fn default_not_an_outcome(&self) -> Result<String> {
        Ok("draft".into())
    }

    #[start]
    #[router(routes = ["a"], terminal = ["a"])]
    #[human_feedback(message = "ok?", emit = ["approved"])]
    async fn router_with_emit(&self) -> Result<String> {
        Ok("a".into())
    }

    #[start]
    #[human_feedback(message = "ok?", emit = ["approved", "rejected"], default = "rejected")]
    async fn default_spelled_the_old_way(&self) -> Result<String> {
        Ok("draft".into())
    }

    // A model maps answers to outcomes: without outcomes it has nothing to map to.
    #[start]
    #[human_feedback(message = "ok?", llm = crewflow::llm::Llm::new("openai/gpt-4o-mini"))]
    async fn llm_without_emit(&self) -> Result<String> {
        Ok("draft".into())
    }

    #[start]
    #[human_feedback(message = "ok?", emit = ["approved", "approved"])]
    async fn repeated_outcome(&self) -> Result<String> {
        Ok("draft".into())
    }

    #[start]
    #[human_feedback(message = "ok?", timeout = 5)]
    async fn unknown_option(&self) -> Result<String> {
        Ok("draft".into())
    }

    #[start]
    #[human_feedback(message = "Publish?", emit = ["approved", "rejected"])]
    async fn draft(&self) -> Result<String> {
        Ok("draft".into())
    }

    // A misspelt outcome.
    #[listen("aproved")]
    async fn typo(&self) -> Result<()> {
        Ok(())
    }

    #[human_feedback(message = "ok?")]
    async fn not_a_step(&self) -> Result<String> {
        Ok("draft".into())
    }
}

fn main() {}
