use crewflow::prelude::*;

#[derive(Route, Clone, Copy)]
enum Lane {
    Security,
}

struct Triage;

#[flow]
impl Triage {
    #[start]
    async fn intake(&self) -> Result<()> {
        Ok(())
    }

    #[router(intake)]
    async fn classify(&self) -> Result<Lane> {
        Ok(Lane::Security)
    }

    #[listen(Lane::Securty)]
    async fn escalate(&self) -> Result<()> {
        Ok(())
    }
}

fn main() {}
