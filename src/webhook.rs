//! [`WebhookFeedback`]: posts feedback requests to a URL and pauses the run.

use std::time::Duration;

use crewflow_core::StepError;
use crewflow_core::feedback::{FeedbackFuture, FeedbackProvider, FeedbackReply, FeedbackRequest, NotifyFuture};

/// Posts each feedback request as JSON to a URL (a review queue, a chat bot, a ticketing
/// system) and pauses the run. The reviewer's answer comes back through
/// [`Flow::resume_with_feedback`](crate::Flow::resume_with_feedback) (and through the server's
/// endpoint when the server is in use).
///
/// The body is the [`FeedbackRequest`] (`run_id`, `flow`, `step`, `message`, `output`, `emit`,
/// `default_outcome`, `metadata`, `requested_at`, and `id`, which
/// [`Flow::resume_with_feedback_for`](crate::Flow::resume_with_feedback_for) takes). It is posted
/// once the pause is saved, so an answer that comes right back finds the run waiting. A
/// connection error or a 5xx answer is retried twice, 200 ms then 800 ms later; after that, or
/// on any other non-2xx answer, the kickoff returns [`FeedbackError::FeedbackNotification`](crate::Error)
/// naming the URL and the status, and the run stays paused.
///
/// ```no_run
/// use crewflow::{FlowBuilder, HumanFeedback};
/// use crewflow::feedback::WebhookFeedback;
///
/// let review = HumanFeedback::new("Approve this refund?")
///     .emit(["approved", "rejected"])
///     .provider(WebhookFeedback::new("https://reviews.example.com/hooks/crewflow").bearer("secret"));
/// ```
#[derive(Clone, Debug)]
pub struct WebhookFeedback {
    url: String,
    token: Option<String>,
    client: reqwest::Client,
}

impl WebhookFeedback {
    /// Posts to `url`.
    pub fn new(url: impl Into<String>) -> Self {
        crewflow_llm::install_crypto_provider();
        WebhookFeedback { url: url.into(), token: None, client: reqwest::Client::new() }
    }

    /// Sends `Authorization: Bearer <token>`.
    pub fn bearer(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    async fn post(self, body: FeedbackRequest) -> Result<(), StepError> {
        let mut delays = [Duration::from_millis(200), Duration::from_millis(800)].into_iter();
        loop {
            let mut request = self.client.post(&self.url).json(&body).timeout(Duration::from_secs(30));
            if let Some(token) = &self.token {
                request = request.bearer_auth(token);
            }
            let retryable = match request.send().await {
                Ok(resp) if resp.status().is_success() => return Ok(()),
                Ok(resp) if resp.status().is_server_error() => format!("it answered {}", resp.status()),
                Ok(resp) => {
                    return Err(StepError::msg(format!(
                        "the feedback webhook {} answered {}; check the URL and its credentials",
                        self.url,
                        resp.status()
                    )));
                }
                Err(e) => format!("it could not be reached: {e}"),
            };
            match delays.next() {
                Some(delay) => tokio::time::sleep(delay).await,
                None => {
                    return Err(StepError::msg(format!(
                        "the feedback webhook {} failed three times ({retryable})",
                        self.url
                    )));
                }
            }
        }
    }
}

impl FeedbackProvider for WebhookFeedback {
    /// Pauses the run; the request is posted once the pause is saved ([`paused`](Self::paused)),
    /// so that an answer coming right back finds the run paused.
    fn request(&self, _: &FeedbackRequest) -> FeedbackFuture {
        Box::pin(async { Ok(FeedbackReply::Pending) })
    }

    fn paused(&self, request: &FeedbackRequest) -> NotifyFuture {
        Box::pin(self.clone().post(request.clone()))
    }

    fn pauses(&self) -> bool {
        true
    }
}
