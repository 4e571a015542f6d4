use crewflow::prelude::*;

struct Headless;

#[flow]
impl Headless {
    async fn helper(&self) {}

    #[listen(helper)]
    async fn orphan(&self) -> Result<()> {
        Ok(())
    }
}

fn main() {}
