use crewflow::prelude::*;

struct Mailer;

// Ported from CrewAI's `@listen("send")`: in crewflow a string in a trigger is a route label,
// and a step is named without quotes.
#[flow]
impl Mailer {
    #[start]
    async fn send(&self) -> Result<()> {
        Ok(())
    }

    #[listen("send")]
    async fn confirm(&self) -> Result<()> {
        Ok(())
    }
}

fn main() {}
