use crewflow::prelude::*;

struct Flaky;

#[flow]
impl Flaky {
    #[start]
    #[retry(backoff = std::time::Duration::from_millis(5))]
    async fn no_attempts(&self) -> Result<()> {
        Ok(())
    }

    #[start]
    #[retry(attempts = 3, tries = 4)]
    async fn unknown_option(&self) -> Result<()> {
        Ok(())
    }

    #[retry(attempts = 2)]
    fn helper(&self) {}
}

fn main() {}
