use crewflow::prelude::*;

#[derive(Route, Clone, Copy)]
enum Lane {
    Security,
}

#[derive(Route, Clone, Copy)]
enum Quality {
    Pass,
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

    #[listen(Quality::Pass)]
    async fn publish(&self) -> Result<()> {
        Ok(())
    }
}

fn main() {}
