use crewflow::prelude::*;

#[derive(Route, Clone, Copy)]
enum Lane {
    Security,
    Priority,
    #[route(terminal)]
    Ignore,
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

    #[listen(Lane::Security)]
    async fn escalate(&self) -> Result<()> {
        Ok(())
    }
}

fn main() {}
